"""The ``livelearn`` command line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from livelearn.cli._settings import load as _load
from livelearn.cli._settings import load_and_log as _settings
from livelearn.cli.logs import setup_logging
from livelearn.errors import (
    ConfigError,
    DeadLetterError,
    LivelearnError,
    ReleaseError,
    ServiceUnavailable,
    SnapshotError,
    StackError,
)

if TYPE_CHECKING:
    from livelearn.cli.devkeys import Key
    from livelearn.settings import Settings

log = logging.getLogger("livelearn")

STACK_DIR = Path(os.environ.get("LIVELEARN_STACK_DIR", ".stack"))


# Exit codes, as the README lists them. Anything not below is a bug: Python prints its
# traceback and exits 1.
EXIT_OK = 0
EXIT_BAD_SETTINGS = 2  # a setting or an argument is wrong (ConfigError, ReleaseError)
EXIT_NOT_FOUND = 3  # the command found nothing to show (no checkpoints, no local stack)
EXIT_BAD_DATA = 65  # sysexits' EX_DATAERR: a stored snapshot or release cannot be used
EXIT_UNAVAILABLE = 69  # sysexits' EX_UNAVAILABLE: Kafka or Redis does not answer
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C before the end (replay writes a partial report)

EXIT_CODES: tuple[tuple[type[LivelearnError], int], ...] = (
    (ConfigError, EXIT_BAD_SETTINGS),
    (ReleaseError, EXIT_BAD_SETTINGS),
    (ServiceUnavailable, EXIT_UNAVAILABLE),
    (StackError, EXIT_UNAVAILABLE),
    (DeadLetterError, EXIT_UNAVAILABLE),
    (SnapshotError, EXIT_BAD_DATA),
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``livelearn`` console script; returns the exit code."""
    # Until a command installs its own handlers (a worker stops after a final checkpoint),
    # a stop leaves at once: nothing has started yet. The heavy imports come after this.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _exit_cleanly) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        return int(args.func(args))
    except LivelearnError as exc:
        code = next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), None)
        if code is None:
            raise  # raised on purpose but never expected here: a bug, with its traceback
        print(f"livelearn: {exc}", file=sys.stderr)
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livelearn", description=__doc__)
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings file (default: config/livelearn.yaml, or $LIVELEARN_CONFIG)",
    )
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="join the consumer group and learn from the models' topics")
    w.set_defaults(func=_cmd_worker)

    d = sub.add_parser(
        "demo",
        help="start a local stack if none is configured, stream the Phishing data set "
        "into a topic and learn from it live",
    )
    d.add_argument("--model", default="phishing", help="model spec to run (default: phishing)")
    d.add_argument("--dataset", default="phishing", help="River data set to stream")
    d.add_argument("--rate", type=float, default=250.0, help="events a second (default 250)")
    d.add_argument("--partitions", type=int, default=1, help="partitions of a new topic")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser(
        "stack",
        help="the local Kafka + Redis stack (no Docker); `token` prints its development API "
        "token, for the status page of `livelearn serve` on it",
    )
    s.add_argument("action", choices=["up", "down", "status", "token"])
    s.set_defaults(func=_cmd_stack)

    m = sub.add_parser("models", help="inspect checkpointed models in Redis")
    msub = m.add_subparsers(required=True, metavar="ACTION")
    ml = msub.add_parser("list", help="models with checkpoints")
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=_cmd_models_list)
    ms = msub.add_parser("show", help="a model's shards: offsets, counts, metrics, drift")
    ms.add_argument("name")
    ms.add_argument("--json", action="store_true")
    ms.set_defaults(func=_cmd_models_show)
    mr = msub.add_parser("release", help="freeze the model's current shards as a new release")
    mr.add_argument("name")
    mr.add_argument("--note", default="", help="a note kept with the release")
    mr.set_defaults(func=_cmd_models_release)
    mrs = msub.add_parser("releases", help="the model's releases, and which one is pinned")
    mrs.add_argument("name")
    mrs.add_argument("--json", action="store_true")
    mrs.set_defaults(func=_cmd_models_releases)
    mp = msub.add_parser("promote", help="pin serving to release N")
    mp.add_argument("name")
    mp.add_argument("number", type=int, metavar="N")
    mp.set_defaults(func=_cmd_models_promote)
    mb = msub.add_parser("rollback", help="pin serving to the release before the current one")
    mb.add_argument("name")
    mb.set_defaults(func=_cmd_models_rollback)
    mf = msub.add_parser("follow", help="serve the latest checkpoints again (unpin)")
    mf.add_argument("name")
    mf.set_defaults(func=_cmd_models_follow)
    mx = msub.add_parser(
        "reset",
        help="delete every checkpoint of the model (all shards, epochs and versions) so that "
        "the next worker start trains it afresh with its configured spec; releases are kept",
        description="Delete every checkpoint of the model so that the next worker start "
        "trains it afresh, from the spec's start, with the spec in the configuration: "
        "the way forward when a worker refuses shards whose checkpoint was learned under "
        "another spec. Releases are kept (a pinned release is still served). Stop or hold "
        "the model's workers first.",
    )
    mx.add_argument("name")
    mx.add_argument("--yes", action="store_true", help="delete; without it nothing is deleted")
    mx.set_defaults(func=_cmd_models_reset)

    from livelearn.cli import replay

    replay.register(sub)

    pr = sub.add_parser("produce", help="stream a bundled River data set into a topic")
    pr.add_argument("topic")
    pr.add_argument("--dataset", default="phishing")
    pr.add_argument("--rate", type=float, default=None, help="events a second (default: unlimited)")
    pr.add_argument("--limit", type=int, default=None)
    pr.set_defaults(func=_cmd_produce)

    sv = sub.add_parser("serve", help="serve predictions over HTTP (serving.host:serving.port)")
    sv.set_defaults(func=_cmd_serve)
    return p


def _cmd_worker(args: argparse.Namespace) -> int:
    from livelearn.stream.app import build_worker

    settings = _settings(args)
    build_worker(settings).run()
    return 0


def _cmd_stack(args: argparse.Namespace) -> int:
    from livelearn.devtools import stack

    if args.action == "token":
        from livelearn.cli.devkeys import dev_token

        print(dev_token(STACK_DIR))
    elif args.action == "up":
        info = stack.up(STACK_DIR)
        print("\n".join(info.env_lines()))
    elif args.action == "down":
        stopped = stack.down(STACK_DIR)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        status = stack.status(STACK_DIR)
        if status is None:
            print("not running", file=sys.stderr)
            return EXIT_NOT_FOUND
        print("\n".join(status.env_lines()))
    return 0


def _store(args: argparse.Namespace) -> Any:
    from livelearn.store.connection import checkpoint_store, connect_redis

    settings = _load(args)
    store = checkpoint_store(settings, connect_redis(settings))
    store.migrate()  # a deployment from before hash tags, whose workers are not upgraded yet
    return store


def _cmd_models_list(args: argparse.Namespace) -> int:
    from livelearn.cli.models import describe_model

    store = _store(args)
    rows = [describe_model(store, m) for m in store.models()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(
                f"{row['model']}: {len(row['shards'])} shard(s), "
                f"{row['events_learned']} learned, {row['events_scored']} scored"
            )
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    from livelearn.cli.models import describe_model, format_model
    from livelearn.errors import ConfigError

    try:
        codec = _load(args).snapshot_codec()
    except ConfigError:  # no keys here: the key ids the store records, unverified
        codec = None
    desc = describe_model(_store(args), args.name, codec)
    if not desc["shards"]:
        print(f"livelearn: no checkpoints for model {args.name!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(json.dumps(desc, indent=2) if args.json else format_model(desc))
    return 0


def _release_store(args: argparse.Namespace) -> Any:
    from livelearn.store.connection import checkpoint_store, connect_redis
    from livelearn.store.releases import ReleaseStore

    settings = _load(args)
    client = connect_redis(settings)
    prefix = settings.redis.key_prefix
    store = checkpoint_store(settings, client)
    store.migrate()  # a deployment from before hash tags, whose workers are not upgraded yet
    return ReleaseStore(
        client,
        store,
        settings.require_keyring(),
        prefix,
        keep=settings.serving.keep_releases,
        accept_legacy=settings.security.accept_legacy_snapshots,
    )


def _cmd_models_release(args: argparse.Namespace) -> int:
    print(_release_store(args).create(args.name, note=args.note))
    return 0


def _cmd_models_releases(args: argparse.Namespace) -> int:
    from livelearn.errors import ReleaseError

    releases = _release_store(args)
    pinned = releases.pinned(args.name)
    rows: list[dict[str, Any]] = []
    for number in releases.numbers(args.name):
        try:
            row = releases.get(args.name, number).summary()
        except ReleaseError as exc:
            row = {"model": args.name, "release": number, "error": str(exc)}
        rows.append({**row, "pinned": number == pinned})
    if args.json:
        print(json.dumps({"model": args.name, "pinned": pinned, "releases": rows}, indent=2))
        return 0
    serving = f"release {pinned}" if pinned is not None else "the latest checkpoints"
    print(f"model {args.name}: {len(rows)} release(s), serving {serving}")
    for row in rows:
        mark = "*" if row["pinned"] else " "
        if "error" in row:
            print(f" {mark}{row['release']:>4}  INVALID: {row['error']}")
            continue
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created_at"]))
        note = f"  {row['note']}" if row["note"] else ""
        print(
            f" {mark}{row['release']:>4}  {created}  {row['source']:<6}  "
            f"{len(row['shards'])} shard(s)  {row['events_learned']} learned{note}"
        )
    return 0


def _cmd_models_promote(args: argparse.Namespace) -> int:
    _release_store(args).promote(args.name, args.number)
    print(f"{args.name}: serving release {args.number}")
    return 0


def _cmd_models_rollback(args: argparse.Namespace) -> int:
    print(_release_store(args).rollback(args.name))
    return 0


def _cmd_models_follow(args: argparse.Namespace) -> int:
    _release_store(args).follow(args.name)
    print(f"{args.name}: serving the latest checkpoints")
    return 0


def _cmd_models_reset(args: argparse.Namespace) -> int:
    store = _store(args)
    shards = store.shards(args.name)
    if not shards:
        print(f"livelearn: no checkpoints for model {args.name!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if not args.yes:
        listed = ", ".join(str(s) for s in shards)
        print(
            f"livelearn: models reset would delete every checkpoint of model {args.name!r}: "
            f"{len(shards)} shard(s) ({listed}), their epochs and versions, so that the next "
            f"worker start trains it afresh; releases are kept. Run again with --yes to delete.",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    deleted = store.delete_model(args.name)
    for shard in deleted:
        print(f"deleted {shard}")
    print(
        f"{args.name}: {len(deleted)} checkpoint(s) deleted; the next worker start trains it "
        "afresh from its spec's start; its releases are kept"
    )
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from livelearn.devtools.produce import dataset_events, produce_events

    settings = _load(args)
    bootstrap, _ = settings.require_services()
    sent = produce_events(
        bootstrap, args.topic, dataset_events(args.dataset), rate=args.rate, limit=args.limit
    )
    print(f"sent {sent} events to {args.topic}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from livelearn.cli.devkeys import use_local
    from livelearn.serving.api import create_app, serve
    from livelearn.serving.lookup import Lookup
    from livelearn.serving.metrics import ServingMetrics

    # On the local stack, the development keys stand in for those not set (with a
    # warning); elsewhere a missing token or snapshot key stops here, naming the setting.
    # The hash key is needed only by a model that hashes a field: the lookup asks for it.
    needed: tuple[Key, ...] = ("snapshot_key", "tokens")
    settings = use_local(_settings(args), STACK_DIR, needed, start=False, optional=("hash_key",))
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again to the handler
    # it found: make that one a clean exit, so the lookup is closed below.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    metrics = ServingMetrics()
    prediction_log = None
    topic = settings.serving.prediction_log_topic
    if topic is not None:
        from livelearn.serving.prediction_log import PredictionLog
        from livelearn.stream.app import ensure_topics

        bootstrap = settings.require_services()[0]
        ensure_topics(bootstrap, {topic: 1}, settings.topics)
        prediction_log = PredictionLog(bootstrap, topic, settings.kafka.client_id, metrics.registry)
    lookup = Lookup(settings, metrics=metrics)
    lookup.start()
    # The loaded models are long-lived: keep the collector from walking them on every
    # young-generation pass (it was the main source of the prediction latency tail).
    gc.freeze()
    try:
        app = create_app(lookup, settings, metrics, prediction_log)
        host, port = settings.serving.host, settings.serving.port
        url = f"http://{_browsable(host)}:{port}"
        log.info("serving predictions", extra={"fields": {"url": url, "status_page": f"{url}/ui"}})
        serve(app, settings.serving, metrics)
    finally:
        lookup.close()
        if prediction_log is not None:
            prediction_log.close()
    return 0


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _with_local_services(args: argparse.Namespace) -> Settings:
    """Settings, on the local stack (started first) where Kafka or Redis is not configured,
    with its development keys where no key is (`cli.devkeys`)."""
    from livelearn.cli.devkeys import use_local

    return use_local(_settings(args), STACK_DIR, ("snapshot_key", "hash_key"), start=True)


def _this_command() -> str:
    """How to run livelearn again from here: the script beside this interpreter (the
    project's .venv when started by make), else whatever ``livelearn`` is on PATH."""
    script = Path(sys.executable).parent / "livelearn"
    if not script.is_file():
        return "livelearn"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def _cmd_demo(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, TopicPartition

    from livelearn.cli.models import describe_model, format_model
    from livelearn.devtools.produce import dataset_events, produce_events
    from livelearn.settings import server_list
    from livelearn.stream.app import build_worker, ensure_topics
    from livelearn.stream.worker import ShardProgress, summarize

    settings = _with_local_services(args)
    settings = settings.model_copy(
        update={"log": settings.log.model_copy(update={"progress_seconds": 1.0})}
    )
    setup_logging(settings.log)
    spec = settings.model(args.model)
    settings = settings.model_copy(update={"models": [spec]})
    bootstrap, _ = settings.require_services()
    topic = spec.topics[0]
    if ensure_topics(bootstrap, {topic: args.partitions}, settings.topics):
        print(f"created topic {topic} with {args.partitions} partition(s)")

    produced = threading.Event()
    sent = [0]

    def producer() -> None:
        def count(n: int) -> None:
            sent[0] = n

        produce_events(
            bootstrap, topic, dataset_events(args.dataset), rate=args.rate, on_sent=count
        )
        produced.set()

    started = time.monotonic()
    primary = spec.metrics[0]

    def show(progress: list[ShardProgress], rate: float) -> None:
        row = summarize(progress).get(spec.name)
        if row is None:
            waited = time.monotonic() - started
            why = ""
            if waited > 3:  # a demo killed before leaves its member in the group for a while
                session_s = settings.kafka.session_timeout_ms / 1000
                why = (
                    f"; a worker stopped without leaving the group holds them for up to "
                    f"{session_s:g} s (kafka.session_timeout_ms)"
                )
            print(f"  waiting for partitions… ({sent[0]} events produced{why})")
            return
        cum = row["metrics"].get(primary)
        roll = row["rolling_metrics"].get(primary)
        print(
            f"  {time.monotonic() - started:5.1f}s  produced {sent[0]:>6}  learned "
            f"{row['events_learned']:>6}  {rate:7.0f} ev/s  {primary} {_fmt(cum)} "
            f"(rolling {_fmt(roll)})"
        )

    proc = build_worker(settings, on_progress=show)
    if proc.http is not None:
        print(f"metrics: http://{settings.http.host}:{proc.http.port}/metrics")
    print(f"streaming the {args.dataset} data set into {topic} at {args.rate:g} events/s")
    threading.Thread(target=producer, name="demo-producer", daemon=True).start()

    def stop_when_caught_up() -> None:
        produced.wait()
        probe = KafkaConsumer(bootstrap_servers=server_list(bootstrap), enable_auto_commit=False)
        try:
            tps = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or []]
            ends = probe.end_offsets(tps)
        finally:
            probe.close()
        while not proc.worker.stopping:
            done = {(s.topic, s.partition): n for s, n in proc.worker.positions().items()}
            if all(done.get((tp.topic, tp.partition), -1) >= end for tp, end in ends.items()):
                proc.worker.stop()
                return
            time.sleep(0.2)

    threading.Thread(target=stop_when_caught_up, name="demo-watch", daemon=True).start()
    proc.run()
    print()
    from livelearn.store.connection import checkpoint_store, connect_redis

    store = checkpoint_store(settings, connect_redis(settings))
    print(format_model(describe_model(store, spec.name)))
    print(f"\nstate is in Redis; see it again with: {_this_command()} models show {spec.name}")
    print(f"(in a new shell on the local stack, first: export $({_this_command()} stack up))")
    _print_how_to_serve(args, settings)
    return 0


def _print_how_to_serve(args: argparse.Namespace, settings: Settings) -> None:
    """The demo's last lines: the command that serves the model, and the status page."""
    from livelearn.cli.devkeys import missing, on_local_stack

    config = f" --config {shlex.quote(str(args.config))}" if args.config is not None else ""
    # Started by `make run`: `make serve` is the same command.
    make = " (or: make serve)" if os.environ.get("MAKELEVEL") and not config else ""
    url = f"http://{_browsable(settings.serving.host)}:{settings.serving.port}/ui"
    if not missing(settings, ["tokens"]):
        token = "one of serving.tokens"
    elif on_local_stack(settings, STACK_DIR):
        token = f"the development one is printed by: {_this_command()} stack token"
    else:
        token = "set LIVELEARN_SERVING__TOKENS first: serve refuses to start without one"
    print(f"\nserve the model with: {_this_command()}{config} serve{make}")
    print(f"its status page: {url} (it asks for the API token: {token})")


def _browsable(host: str) -> str:
    """Where a browser on this machine reaches a server bound to ``host``.

    >>> _browsable("0.0.0.0"), _browsable("::"), _browsable("127.0.0.1"), _browsable("::1")
    ('127.0.0.1', '[::1]', '127.0.0.1', '[::1]')
    """
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
