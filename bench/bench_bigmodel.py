"""A model of 150 MB through the worker: what its checkpoints cost the learning thread.

A 10-tree ``forest.ARFClassifier(n_models=10)`` learns ``--events`` synthetic events of
``--features`` numeric features on a one-partition topic; with many features its trees
grow large fast (each leaf keeps a splitter per feature), and pickling it takes seconds.
Two cases learn the same events through the worker, one after the other in each round:

- ``default cadence``: the spec's defaults (every 10,000 events or every second) with
  ``checkpoint.max_share`` (stream/_budget.py), which defers checkpoints while they take
  more than that share of the learning thread;
- ``checkpoints off``: checkpoints every 10^9 events or seconds, so that none is written
  while it learns.

Each case is timed from the batch that passes ``--warmup`` events (by then the forest is
near its full size) to the batch that learns the last event (the shutdown's checkpoint is
left out of both). It prints, per case: events learned a second in wall time and in the
learning thread's CPU time (``time.thread_time``, steadier on a busy machine), the
checkpoints written, their mean time, the largest snapshot, the longest interval between
two checkpoints of the shard, and the share of the learning thread's time spent
checkpointing; then the throughput ratio of the first case to the second.

Then the lookup serves the forest the first case checkpointed beside a small linear model:
the linear model's ``predict_one``, called back to back, is timed while nothing loads and
while the forest's next version loads (the write is prepared beforehand, so that only the
lookup's reload runs beside the predictions): p50, p99 and max of both, and the reload's
time. The API answers from the same lookup (serving/api.py).

``python -m bench bigmodel [--rounds 1] [--events 30000] [--warmup 15000]
[--features 100] [--max-share 0.1]``; ``python -m bench bigmodel --serving-only --events
20000`` grows the forest in process, without the worker, and measures the lookup alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from prometheus_client import CollectorRegistry

from bench._report import call_latencies
from bench.bench_worker import MODELS, services, topic_with
from livelearn.learners import Binding, Learner, spec_fingerprint, stats_digest
from livelearn.serving import Lookup, ServingMetrics
from livelearn.settings import load_settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.stream.app import build_worker
from livelearn.stream.fetcher import KafkaRecord
from livelearn.stream.worker import Partition, Shard

ARF = {
    "task": "binary",
    "pipeline": [{"class": "forest.ARFClassifier", "params": {"n_models": 10, "seed": 42}}],
    "metrics": ["Accuracy"],
}
# Checkpoints that never fall due while the case learns.
OFF = {"every_events": 10**9, "every_seconds": 1e9}


@dataclass(frozen=True)
class Run:
    """One case's figures over the events it learned."""

    model: str  # its name, and its key prefix in Redis
    events: int
    seconds: float
    cpu_seconds: float
    checkpoints: int
    checkpoint_seconds: float
    largest_bytes: float
    longest_interval: float

    @property
    def rate(self) -> float:
        """Events learned a second of wall time."""
        return self.events / self.seconds

    @property
    def cpu_rate(self) -> float:
        """Events learned a second of the learning thread's CPU time."""
        return self.events / self.cpu_seconds

    @property
    def share(self) -> float:
        """The share of the learning thread's wall time spent checkpointing."""
        return self.checkpoint_seconds / self.seconds


def events(n: int, features: int, seed: int = 7) -> list[bytes]:
    """``n`` labelled events of ``features`` uniform features; the label depends on three
    of them and noise, so the trees keep splitting."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {f"f{j}": round(rng.random(), 6) for j in range(features)}
        y = x["f0"] + x["f1"] * x["f2"] + 0.3 * rng.random() > 0.8
        out.append(orjson.dumps({"id": f"e{i}", "ts": i, "key": None, "features": x, "label": y}))
    return out


def run_worker(
    bootstrap: str,
    redis_url: str,
    topic: str,
    n: int,
    warmup: int,
    checkpoint: dict[str, Any],
    share: float,
) -> Run:
    """The worker learning the ARF from ``topic`` until its ``n``-th event, timed from the
    batch that passes ``warmup``."""
    if warmup >= n:
        raise SystemExit(f"--warmup ({warmup}) must be less than --events ({n})")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("LIVELEARN_SECURITY__SNAPSHOT_KEY", uuid.uuid4().hex * 2)
    os.environ.setdefault("LIVELEARN_SECURITY__HASH_KEY", uuid.uuid4().hex * 2)
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": name},
        redis={"url": redis_url, "key_prefix": name},
        log={"level": "WARNING", "format": "text", "progress_seconds": 3600},
        checkpoint={"max_share": share},
        models=[{"name": name, "topics": [topic], **ARF, "checkpoint": checkpoint}],
    )
    labels = {"model": name, "topic": topic, "partition": "0"}
    shards: list[Shard] = []
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    longest = 0.0
    largest = 0.0

    def spent() -> tuple[float, float]:
        count = registry.get_sample_value("livelearn_checkpoint_seconds_count", {"model": name})
        total = registry.get_sample_value("livelearn_checkpoint_seconds_sum", {"model": name})
        return count or 0.0, total or 0.0

    def on_batch(part: Partition, records: list[KafkaRecord]) -> None:
        nonlocal longest, largest
        shard = part.shards[0]
        if first:
            interval = registry.get_sample_value("livelearn_checkpoint_interval_seconds", labels)
            size = registry.get_sample_value("livelearn_checkpoint_size_bytes", labels)
            longest, largest = max(longest, interval or 0.0), max(largest, size or 0.0)
        if not shards and shard.next_offset >= warmup:
            shards.append(shard)
            count, total = spent()
            first.update(
                at=time.monotonic(),
                cpu=time.thread_time(),
                offset=shard.next_offset,
                count=count,
                total=total,
            )
        elif shard.next_offset >= n and not last:
            count, total = spent()
            last.update(at=time.monotonic(), cpu=time.thread_time(), count=count, total=total)
            proc.worker.stop()

    proc = build_worker(settings, serve_http=False, on_batch=on_batch)
    registry = proc.metrics.registry
    proc.run(install_signals=False)
    if not last:
        raise RuntimeError(f"the worker stopped before learning its {n}-th event")
    return Run(
        name,
        int(n - first["offset"]),
        last["at"] - first["at"],
        last["cpu"] - first["cpu"],
        int(last["count"] - first["count"]),
        last["total"] - first["total"],
        largest,
        longest,
    )


def _quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def serve_beside(redis_url: str, name: str, topic: str, features: int) -> None:
    """The lookup serving the forest model ``name`` checkpointed (its key prefix too)
    beside a linear model: the linear model's predictions while nothing loads, and while
    the forest's next version loads."""
    small = f"{name}-linear"
    settings = load_settings(
        None,
        redis={"url": redis_url, "key_prefix": name},
        serving={"reload_check_seconds": 3600},  # reloads on the announcement alone
        models=[
            {"name": name, "topics": [topic], **ARF},
            {"name": small, "topics": [small], **MODELS["linear"][1]},
        ],
    )
    codec = settings.snapshot_codec()
    client = redis.Redis.from_url(redis_url)
    store = RedisCheckpointStore(client, name)
    big = ShardId(name, topic, 0)
    checkpoint = store.load(big)
    if checkpoint is None:
        raise RuntimeError(f"no checkpoint of {big}")
    linear = Learner(settings.model(small))
    rows = [orjson.loads(v) for v in events(2_000, features, seed=11)]
    for offset, row in enumerate(rows):
        linear.process(row["features"], row["label"], offset)
    shard = ShardId(small, small, 0)
    epoch, _ = store.claim(shard)
    store.write(codec, shard, epoch, linear, linear.events_learned, linear.stats())

    registry = CollectorRegistry()
    lookup = Lookup(settings, metrics=ServingMetrics(registry))
    lookup.start()
    try:
        # The forest's next version, signed beforehand: only the lookup's reload runs
        # beside the predictions below.
        epoch, _ = store.claim(big)
        version = checkpoint.version + 1
        binding = Binding(
            name, topic, 0, checkpoint.next_offset, epoch, version, stats_digest(checkpoint.stats)
        )
        spec = codec.header(checkpoint.blob).get("spec")
        blob = codec.encode(codec.decode(checkpoint.blob), binding, spec)
        probe = rows[-1]["features"]
        expected = linear.predict_proba_one(probe)

        def predict() -> None:
            if lookup.predict_one(small, probe).proba != expected:
                raise RuntimeError("the lookup answered another model's prediction")

        def loaded() -> float:
            labels = {"model": name, "reason": "announce"}
            return registry.get_sample_value("livelearn_serving_reloads_total", labels) or 0.0

        quiet = call_latencies(predict, lambda: True, 5.0)
        writer = threading.Thread(
            target=store.save,
            args=(big, epoch, blob, checkpoint.next_offset, checkpoint.stats, version),
            kwargs={"kid": codec.keys.active},
        )
        before = loaded()
        writer.start()
        loading = call_latencies(predict, lambda: loaded() > before, 1.0)
        writer.join()
        reload_s = registry.get_sample_value(
            "livelearn_serving_reload_seconds_sum", {"model": name}
        )
    finally:
        lookup.close()
        client.close()
    print(f"\nlookup: {name} ({len(blob) / 1e6:,.0f} MB) beside a linear model")
    print(f"{'linear predict_one':<26} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'calls':>8}")
    for label, values in (("nothing loading", quiet), ("the forest loading", loading)):
        print(
            f"{label:<26} {1e3 * _quantile(values, 50):>8.3f} {1e3 * _quantile(values, 99):>8.3f}"
            f" {1e3 * max(values):>8.1f} {len(values):>8,}"
        )
    print(f"the initial load and the reload of the forest took {reload_s or 0.0:.1f} s in all")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench bigmodel", description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--warmup", type=int, default=15_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--max-share", type=float, default=0.1)
    parser.add_argument(
        "--serving-only",
        action="store_true",
        help="grow the forest here from --events events, without the worker, and only "
        "measure the lookup serving it",
    )
    args = parser.parse_args(argv)
    bootstrap, redis_url = services()
    if args.serving_only:
        serve_beside(
            redis_url, *_grown_forest(redis_url, events(args.events, args.features)), args.features
        )
        return
    topic = topic_with(bootstrap, events(args.events, args.features))
    print(
        f"ARFClassifier(n_models=10), {args.events:,} events of {args.features} features; "
        f"checkpoint.max_share {args.max_share}; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    cases = {"default cadence": {}, "checkpoints off": OFF}
    runs: dict[str, list[Run]] = {case: [] for case in cases}
    for r in range(args.rounds):
        for case, checkpoint in cases.items():
            run = run_worker(
                bootstrap,
                redis_url,
                topic,
                args.events,
                args.warmup,
                checkpoint,
                args.max_share,
            )
            runs[case].append(run)
            print(
                f"  round {r + 1}/{args.rounds} {case}: {run.rate:,.0f} events/s "
                f"({run.cpu_rate:,.0f} a CPU second), {run.checkpoints} checkpoints of "
                f"{run.checkpoint_seconds / max(run.checkpoints, 1):.2f} s, largest "
                f"{run.largest_bytes / 1e6:,.0f} MB, longest interval "
                f"{run.longest_interval:.1f} s, {100 * run.share:.1f}% checkpointing; "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    on, off = runs["default cadence"], runs["checkpoints off"]
    wall = statistics.median(a.rate / b.rate for a, b in zip(on, off, strict=True))
    cpu = statistics.median(a.cpu_rate / b.cpu_rate for a, b in zip(on, off, strict=True))
    share = statistics.median(a.share for a in on)
    print(
        f"\nlearning thread's share spent checkpointing: {100 * share:.1f}% "
        f"(target ≤ {100 * args.max_share:.0f}%)\n"
        f"throughput, default cadence / checkpoints off: {wall:.2f} in wall time, "
        f"{cpu:.2f} in CPU time (target ≥ 0.90)"
    )
    serve_beside(redis_url, on[-1].model, topic, args.features)


def _grown_forest(redis_url: str, values: list[bytes]) -> tuple[str, str]:
    """A forest learned from ``values`` in this process, checkpointed as a worker would:
    its model name (and key prefix) and topic."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("LIVELEARN_SECURITY__SNAPSHOT_KEY", uuid.uuid4().hex * 2)
    settings = load_settings(
        None,
        redis={"url": redis_url, "key_prefix": name},
        models=[{"name": name, "topics": [name], **ARF}],
    )
    learner = Learner(settings.model(name))
    for offset, value in enumerate(values):
        row = orjson.loads(value)
        learner.process(row["features"], row["label"], offset)
    client = redis.Redis.from_url(redis_url)
    store = RedisCheckpointStore(client, name)
    shard = ShardId(name, name, 0)
    epoch, _ = store.claim(shard)
    spec = spec_fingerprint(settings.model(name))
    codec = settings.snapshot_codec()
    store.write(codec, shard, epoch, learner, learner.events_learned, learner.stats(), spec)
    client.close()
    return name, name
