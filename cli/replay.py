"""``livelearn replay``: the command line over ``stream.replay``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer

from livelearn.cli._settings import load_and_log
from livelearn.errors import ConfigError
from livelearn.learners import ModelSpec
from livelearn.settings import Settings
from livelearn.stream.replay import (
    parse_offsets,
    parse_start,
    parse_time,
    publish,
    replay_consumer_config,
    resolve_range,
    run_replay,
    write_report,
)


def register(sub: Any) -> None:
    """Add the ``replay`` subcommand to the CLI's subparsers."""
    r = sub.add_parser(
        "replay",
        help="retrain and evaluate a model on a topic's history (joins no consumer group)",
    )
    r.add_argument("model", help="the configured model to replay")
    r.add_argument("--from", dest="from_", metavar="TIME", help="ISO-8601 start (inclusive)")
    r.add_argument("--to", metavar="TIME", help="ISO-8601 end (exclusive)")
    r.add_argument("--offsets", metavar="P:START-END,…", help="offset ranges per partition")
    r.add_argument(
        "--start", default="fresh", help="fresh (default), live, or release:N to start from"
    )
    r.add_argument("--spec", type=Path, help="a YAML model spec replacing the configured one")
    r.add_argument("--report", type=Path, help="report folder (default reports/replay-…)")
    r.add_argument("--compare", choices=["live"], help="also score the live model")
    r.add_argument("--publish", action="store_true", help="store the result as a release")
    r.add_argument("--dlq", action="store_true", help="send invalid events to the live DLQ")
    r.add_argument("--points", type=int, default=200, help="points in the metric series")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run a replay from the parsed arguments; print where the report went."""
    from livelearn.store.connection import checkpoint_store, connect_redis
    from livelearn.store.releases import ReleaseStore
    from livelearn.stream.app import ensure_topics
    from livelearn.stream.dlq import dead_letter_sink, dlq_topic

    settings = load_and_log(args)
    spec = _spec(settings, args)
    bootstrap, _ = settings.require_services()
    codec, hash_key = settings.snapshot_codec(), settings.require_secret("hash_key")
    start = parse_start(args.start)
    client = connect_redis(settings)
    store = checkpoint_store(settings, client)
    releases = ReleaseStore(
        client,
        store,
        codec.keys,
        settings.redis.key_prefix,
        accept_legacy=settings.security.accept_legacy_snapshots,
    )
    k = settings.kafka
    config = replay_consumer_config(settings)
    probe = KafkaConsumer(**config)
    try:
        span = resolve_range(
            probe,
            spec.topics,
            from_ms=parse_time(args.from_, "--from") if args.from_ else None,
            to_ms=parse_time(args.to, "--to") if args.to else None,
            offsets=parse_offsets(args.offsets) if args.offsets else None,
        )
    finally:
        probe.close()
    # Read in this process even with kafka.fetch_in_child: a replay assigns its partitions
    # and reads positions, which a KafkaConsumer offers and the child fetcher does not.
    # bench/bench_replay.py (`make bench`) measures the replay's rate against River's loop.
    consumer = KafkaConsumer(**config)
    dlq = None
    if args.dlq:
        dead = {dlq_topic(t, k.dlq_suffix): 1 for t in spec.topics}
        ensure_topics(bootstrap, dead, settings.topics, dead_letters=True)
        dlq = dead_letter_sink(settings)
    try:
        result = run_replay(
            settings,
            spec,
            consumer,
            span,
            codec,
            hash_key,
            start=start,
            compare_live=args.compare == "live",
            store=store,
            releases=releases,
            dead_letters=dlq,
            points=args.points,
        )
    finally:
        if dlq is not None:
            dlq.close()
    folder = args.report or Path("reports") / f"replay-{spec.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    report = result.report
    if args.publish:
        if result.interrupted:
            print("interrupted: the partial result is not published")
        else:
            number = publish(releases, spec.name, result.final, note=f"replay {args.start}")
            report["published_release"] = number
            print(
                f"published as candidate release {number} (promote with: "
                f"livelearn models promote {spec.name} {number})"
            )
    json_path, png_path = write_report(report, folder)
    counts = report["counts"]
    metrics = json.dumps(report["replayed"]["metrics"])
    print(
        f"{'interrupted, partial ' if result.interrupted else ''}replay of {spec.name}: "
        f"{counts['learned']} learned, {counts['scored']} scored, {counts['invalid']} invalid "
        f"in {report['seconds']} s ({report['events_per_second']} ev/s); metrics {metrics}"
    )
    print(f"report: {json_path}\nplot:   {png_path}")
    client.close()
    return 130 if result.interrupted else 0


def _spec(settings: Settings, args: argparse.Namespace) -> ModelSpec:
    if args.spec is None:
        return settings.model(args.model)
    if not args.spec.is_file():
        raise ConfigError(f"--spec {str(args.spec)!r} does not exist")
    data = yaml.safe_load(args.spec.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"--spec {args.spec}: expected a mapping (one model spec)")
    data.setdefault("name", args.model)
    return ModelSpec.from_config(data, loc=f"--spec {args.spec}")
