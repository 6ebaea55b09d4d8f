"""A soak: a million events through one worker while the API answers a steady load, and
the memory of both over time (``make soak``).

One topic of ``--partitions`` partitions carries ``--events`` events of River's Agrawal
stream (a stream without repeats, so the tree keeps growing); two models learn it, a
HoeffdingTreeClassifier and StandardScaler|LogisticRegression, with the spec's defaults
(checkpoints every second or 10,000 events, rolling metrics, drift and the monitor): 32
shards on one worker. ``livelearn serve`` serves both and answers ``--rate`` predictions a
second, alternating between the models, for the whole run.

Every ``--every`` seconds it samples the resident memory (RSS) of the worker and of the API,
and the events learned. Less often, it reads every shard's checkpoint from Redis and
measures the models' own size: each shard's learner (model, rolling windows, monitor) by
River's memory walk. The worker also keeps each shard's last snapshot for a rollback, so its
models' size counts those bytes too; the API holds the learners only.

What it checks (the soak target of docs/scaling.md): after warm-up (``--warm-up`` events),
each process's memory other than its models' grows by at most 10%. It prints the figures at
a few points, that verdict, and draws ``soak.png`` and ``soak.csv`` in ``--out``.

``python -m bench soak [--events 1000000] [--partitions 16] [--rate 100] [--out soak]``
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml
from kafka import KafkaProducer
from river import base
from river.datasets import synth

from bench.bench_api import _free_port, _get_json, _wait, cli_env, secret_keys, stop
from bench.bench_api import _load as _open_loop
from bench.bench_worker import services
from livelearn.learners import SnapshotCodec
from livelearn.settings import TopicSettings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.stream.app import ensure_topics

MODELS = {
    "tree": [{"class": "tree.HoeffdingTreeClassifier"}],
    "linear": [
        {"class": "preprocessing.StandardScaler"},
        {"class": "linear_model.LogisticRegression"},
    ],
}
# How much the memory other than the models may grow after warm-up.
TARGET_GROWTH = 0.10


@dataclass
class Sample:
    """One sample: seconds since the start, events learned by the slower model, RSS in
    bytes, the backlog, and (when measured) the models' own size in each process."""

    seconds: float
    learned: int
    worker_rss: int
    api_rss: int
    backlog: int  # events produced and not yet checkpointed past, each model
    worker_models: int | None = None
    api_models: int | None = None


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants."""
    total = 0
    for proc in _tree(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:  # exited between the listing and the read
            continue
    return total


def _tree(pid: int) -> Iterator[int]:
    yield pid
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(k) for k in children.read_text().split()]
        except OSError:
            continue
        for kid in kids:
            yield from _tree(kid)


def _deep_size(obj: object) -> int:
    """Bytes ``obj`` holds, by River's own walk of the object graph."""
    size: int = base.Base._raw_memory_usage.fget(obj)  # type: ignore[attr-defined]
    return size


def _events(
    n: int, partitions: int, topic: str, bootstrap: str, rate: float, produced: list[int]
) -> None:
    """Produce ``n`` Agrawal events, round robin over the partitions, ``rate`` a second (as
    fast as possible when 0); ``produced[0]`` counts them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024)
    began = time.monotonic()
    for i, (x, y) in enumerate(synth.Agrawal(seed=42).take(n)):
        if rate and i % 100 == 0:
            time.sleep(max(0.0, began + i / rate - time.monotonic()))
        event = {"id": f"e{i}", "ts": i, "key": None, "features": x, "label": bool(y)}
        producer.send(topic, orjson.dumps(event), partition=i % partitions)
        produced[0] = i + 1
        if i % 100_000 == 99_999:
            producer.flush()
    producer.flush()
    producer.close()


class Soak:
    """The processes under test and what is read from Redis about them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bootstrap, self.redis_url = services()
        self.name = f"soak-{uuid.uuid4().hex[:8]}"
        self.topic = self.name
        self.models = [f"{self.name}-{kind}" for kind in MODELS]
        ensure_topics(self.bootstrap, {self.topic: args.partitions}, TopicSettings())
        self.keys = secret_keys()
        self.codec = SnapshotCodec(self.keys["snapshot_key"].encode())
        self.store = RedisCheckpointStore(redis.Redis.from_url(self.redis_url), self.name)
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="livelearn-soak-"))
        config = {
            "kafka": {"group_id": self.name},
            "redis": {"key_prefix": self.name},
            "log": {"level": "WARNING", "format": "json"},
            "models": [
                {"name": model, "topics": [self.topic], "task": "binary", "pipeline": pipeline}
                for model, pipeline in zip(self.models, MODELS.values(), strict=True)
            ],
        }
        (self.workdir / "livelearn.yaml").write_text(yaml.safe_dump(config))
        self.env = cli_env(self.bootstrap, self.redis_url, self.port, self.keys)
        self.cli = [
            sys.executable,
            "-m",
            "livelearn.cli.main",
            "--config",
            str(self.workdir / "livelearn.yaml"),
        ]

    def shards(self, model: str) -> list[ShardId]:
        return [ShardId(model, self.topic, p) for p in range(self.args.partitions)]

    def learned(self) -> int:
        """Events the slower model has checkpointed past."""
        return min(
            sum((self.store.describe(s) or {}).get("next_offset", 0) for s in self.shards(m))
            for m in self.models
        )

    def models_size(self) -> tuple[int, int]:
        """The models' own bytes: (in the worker: learners and their last snapshots, in the
        API: learners), from the shards' newest checkpoints."""
        learners = blobs = 0
        for model in self.models:
            for shard in self.shards(model):
                checkpoint = self.store.load(shard)
                if checkpoint is None:
                    continue
                blobs += len(checkpoint.blob)
                learners += _deep_size(self.codec.decode(checkpoint.blob))
        return learners + blobs, learners


def _load(soak: Soak, stopped: threading.Event, results: list[dict[str, Any]]) -> None:
    """Predictions at ``--rate`` a second, alternating models in 5 s stretches, until
    ``stopped`` is set (the API is stopped after). The load runs in this process, on a
    thread of its own: the sampling beside it is light."""
    features = next(iter(synth.Agrawal(seed=1).take(1)))[0]
    body = orjson.dumps({"features": features})
    while not stopped.is_set():
        for model in soak.models:
            path = f"/v1/models/{model}/predict"
            results.append(asyncio.run(_open_loop(soak.port, path, body, soak.args.rate, 5.0, 8)))
            if stopped.is_set():
                return


def run(args: argparse.Namespace) -> list[Sample]:
    soak = Soak(args)
    print(
        f"soak: {args.events:,} Agrawal events on {args.partitions} partitions, models "
        f"{', '.join(MODELS)} ({2 * args.partitions} shards), API at {args.rate:.0f} req/s"
    )
    produced = [0]
    producer = threading.Thread(
        target=_events,
        args=(
            args.events,
            args.partitions,
            soak.topic,
            soak.bootstrap,
            args.produce_rate,
            produced,
        ),
    )
    producer.start()
    samples: list[Sample] = []
    load_results: list[dict[str, Any]] = []
    stopped = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []
    log = (soak.workdir / "worker.log").open("wb")
    loader: threading.Thread | None = None
    try:
        worker = subprocess.Popen([*soak.cli, "worker"], env=soak.env, stderr=log)
        procs.append(worker)
        _wait(lambda: soak.learned() > 0, 180, "the worker's first checkpoints")
        api = subprocess.Popen([*soak.cli, "serve"], env=soak.env, stderr=subprocess.DEVNULL)
        procs.append(api)
        _wait(lambda: _get_json(f"http://127.0.0.1:{soak.port}/readyz")["ok"], 120, "the API")
        loader = threading.Thread(target=_load, args=(soak, stopped, load_results))
        loader.start()
        started = time.monotonic()
        last_size = -1e9
        while True:
            learned = soak.learned()
            sample = Sample(
                time.monotonic() - started,
                learned,
                _rss(worker.pid),
                _rss(api.pid),
                backlog=max(0, produced[0] - learned),
            )
            if time.monotonic() - last_size >= args.size_every or learned >= args.events:
                sample.worker_models, sample.api_models = soak.models_size()
                last_size = time.monotonic()
            samples.append(sample)
            print(
                f"  {sample.seconds:6.0f} s  {learned:>9,} events  worker "
                f"{sample.worker_rss / 2**20:7.1f} MB  API {sample.api_rss / 2**20:7.1f} MB  "
                f"backlog {sample.backlog:>8,}"
                + (
                    f"  models {sample.worker_models / 2**20:6.1f} MB"
                    if sample.worker_models is not None
                    else ""
                ),
                flush=True,
            )
            if learned >= args.events:
                break
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); see {log.name}")
            time.sleep(args.every)
    finally:
        stopped.set()
        if loader is not None:
            loader.join()
        producer.join()
        for proc in reversed(procs):
            stop(proc)
        log.close()
    errors = sum(r["errors"] for r in load_results)
    served = sum(r["requests"] for r in load_results)
    worst = max((r["p99_ms"] for r in load_results), default=float("nan"))
    print(f"API: {served:,} predictions, {errors} errors, worst 5 s p99 {worst:.1f} ms")
    return samples


def _with_models(samples: Sequence[Sample]) -> list[Sample]:
    """The samples from the first with the models measured on, each sample without a
    measurement given the last one before it."""
    out: list[Sample] = []
    last: Sample | None = None
    for s in samples:
        if s.worker_models is not None:
            last = s
        if last is not None:
            out.append(
                s
                if s is last
                else Sample(
                    s.seconds,
                    s.learned,
                    s.worker_rss,
                    s.api_rss,
                    s.backlog,
                    last.worker_models,
                    last.api_models,
                )
            )
    return out


def _other(sample: Sample, process: str) -> float:
    """The memory of ``process`` other than its models in ``sample``."""
    rss = sample.worker_rss if process == "worker" else sample.api_rss
    models = sample.worker_models if process == "worker" else sample.api_models
    return float(rss - (models or 0))


def report(samples: Sequence[Sample], args: argparse.Namespace) -> bool:
    """Print the verdict; True when both processes met the target at every sample after
    warm-up (the peak, not only the end)."""
    after = [s for s in _with_models(samples) if s.learned >= args.warm_up]
    measured = [s for s in after if s.worker_models is not None]
    if not measured:
        raise SystemExit(f"no sample with the models measured past {args.warm_up:,} events")
    first, last = measured[0], after[-1]
    met = True
    for process in ("worker", "api"):
        before = _other(first, process)
        peak = max(after, key=lambda s: _other(s, process))
        growth = _other(peak, process) / before - 1
        ok = growth <= TARGET_GROWTH
        met = met and ok
        models = [
            (s.worker_models if process == "worker" else s.api_models) or 0 for s in (first, last)
        ]
        print(
            f"{process}: memory other than the models {before / 2**20:.1f} MB at "
            f"{first.learned:,} events; at most {_other(peak, process) / 2**20:.1f} MB "
            f"({growth:+.1%}, at {peak.learned:,} events, backlog {peak.backlog:,}), "
            f"{_other(last, process) / 2**20:.1f} MB at the end (target <= "
            f"+{TARGET_GROWTH:.0%}: {'met' if ok else 'MISSED'}); models "
            f"{models[0] / 2**20:.1f} -> {models[1] / 2**20:.1f} MB"
        )
    return met


def plot(samples: Sequence[Sample], path: Path, warm_up: int) -> None:
    """Draw RSS, the models' size and the rest over events learned, for both processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    filled = _with_models(samples)
    xs = [s.learned for s in filled]
    for ax, process in zip(axes, ("worker", "api"), strict=True):
        mine = "worker_rss" if process == "worker" else "api_rss"
        models = "worker_models" if process == "worker" else "api_models"
        ax.plot(xs, [getattr(s, mine) / 2**20 for s in filled], label="RSS", color="tab:blue")
        ax.plot(
            xs,
            [(getattr(s, models) or 0) / 2**20 for s in filled],
            label="models' own size",
            color="tab:green",
        )
        rest = [_other(s, process) / 2**20 for s in filled]
        ax.plot(xs, rest, label="RSS minus models", color="tab:orange")
        reference = [r for s, r in zip(filled, rest, strict=True) if s.learned >= warm_up]
        if reference:
            limit = reference[0] * (1 + TARGET_GROWTH)
            ax.axhline(
                limit, ls="--", color="tab:red", lw=1, label="limit of RSS minus models (+10%)"
            )
        ax.axvline(warm_up, color="grey", lw=1, ls=":")
        shown = "worker" if process == "worker" else "API"
        ax.set_title(f"{shown}: memory over the soak")
        ax.set_xlabel("events learned (each model)")
        ax.set_ylabel("MB")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if process == "worker":
            backlog = ax.twinx()
            backlog.plot(xs, [s.backlog for s in filled], color="grey", lw=0.8, alpha=0.6)
            backlog.set_ylabel("backlog (events not yet learned)", color="grey")
            backlog.set_ylim(bottom=0)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rate", type=float, default=100.0, help="API predictions a second")
    parser.add_argument(
        "--produce-rate",
        type=float,
        default=2000.0,
        help="events produced a second (0: as fast as possible, a backlog soak)",
    )
    parser.add_argument("--warm-up", type=int, default=100_000, help="events before reference")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--size-every", type=float, default=20.0, help="seconds between sizes")
    parser.add_argument("--out", type=Path, default=Path("soak"))
    args = parser.parse_args(argv)
    samples = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    plot(samples, args.out / "soak.png", args.warm_up)
    met = report(samples, args)
    (args.out / "soak.json").write_text(json.dumps({"met": met, "events": args.events}))
    print(f"wrote {args.out / 'soak.png'} and {args.out / 'soak.csv'}")
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
