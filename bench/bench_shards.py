"""Many shards on one worker against one shard, on the same amount of learning.

One shard: one model on a one-partition topic of N events. Many shards: ``--models``
models on a ``--partitions``-partition topic of N / models events, so that both learn N
events in all (64 partitions and 4 models: 256 shards). Both run the worker with the
spec's defaults (checkpoints every second or 10,000 events, rolling metrics, drift and the
monitor on), the linear model, and the default Kafka client.

It prints, for each: the learned events a second (events times models), the checkpoints
written, their mean time per shard, and the learning thread's share of its time spent
checkpointing; and the ratio of the many-shard rate to the one-shard rate. Rounds
interleave.

``python -m bench shards [--rounds 2] [--events 64000] [--partitions 64] [--models 4]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bench.bench_worker import SPECS, _events, services, topic_with
from livelearn.settings import load_settings
from livelearn.stream.app import build_worker
from livelearn.stream.fetcher import KafkaRecord
from livelearn.stream.worker import Partition

PIPELINE = {"pipeline": SPECS["StandardScaler|LogisticRegression"]["pipeline"]}


@dataclass(frozen=True)
class Run:
    """One run's figures."""

    shards: int
    learned: int
    seconds: float
    checkpoints: int
    checkpoint_seconds: float

    @property
    def rate(self) -> float:
        """Events learned a second, every model counted."""
        return self.learned / self.seconds

    @property
    def checkpoint_share(self) -> float:
        """The share of the run the learning thread spent writing checkpoints."""
        return self.checkpoint_seconds / self.seconds


def run_worker(bootstrap: str, redis_url: str, topic: str, models: int, per_partition: int) -> Run:
    """The worker on ``topic`` with ``models`` models, until every shard's checkpoint holds
    the partition's last event; timed from its first batch to the last checkpoint."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("LIVELEARN_SECURITY__SNAPSHOT_KEY", uuid.uuid4().hex * 2)
    os.environ.setdefault("LIVELEARN_SECURITY__HASH_KEY", uuid.uuid4().hex * 2)
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": name},
        redis={"url": redis_url, "key_prefix": name},
        log={"level": "WARNING", "format": "text", "progress_seconds": 3600},
        models=[
            {
                "name": f"{name}-{m}",
                "topics": [topic],
                "task": "binary",
                **PIPELINE,
            }
            for m in range(models)
        ],
    )
    parts: dict[int, Partition] = {}
    started = 0.0
    total_shards = models * _partitions_of(bootstrap, topic)

    def on_batch(part: Partition, records: list[KafkaRecord]) -> None:
        nonlocal started
        if not started:
            started = time.monotonic()
        parts[part.tp.partition] = part
        shards = [s for p in parts.values() for s in p.shards]
        if len(shards) == total_shards and all(s.next_offset >= per_partition for s in shards):
            proc.worker.stop()  # the worker checkpoints every shard as it stops

    proc = build_worker(settings, serve_http=False, on_batch=on_batch)
    proc.run(install_signals=False)
    shards = [s for p in parts.values() for s in p.shards]
    if len(shards) != total_shards or any(s.checkpointed_offset < per_partition for s in shards):
        raise RuntimeError("the worker stopped before every shard's checkpoint held its events")
    ended = max(s.last_checkpoint for s in shards)
    registry = proc.metrics.registry
    checkpoints = sum(
        registry.get_sample_value("livelearn_checkpoint_seconds_count", {"model": s.name}) or 0.0
        for s in settings.models
    )
    spent = sum(
        registry.get_sample_value("livelearn_checkpoint_seconds_sum", {"model": s.name}) or 0.0
        for s in settings.models
    )
    learned = sum(s.learner.events_learned for p in parts.values() for s in p.shards)
    return Run(total_shards, learned, ended - started, int(checkpoints), spent)


def _partitions_of(bootstrap: str, topic: str) -> int:
    from livelearn.stream.app import kafka_admin

    with kafka_admin(bootstrap) as admin:
        (described,) = admin.describe_topics([topic])
    return len(described["partitions"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench shards", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=64_000)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args(argv)
    bootstrap, redis_url = services()
    one_values = _events(args.events)
    many_values = _events(args.events // args.models)
    one_topic = topic_with(bootstrap, one_values)
    many_topic = topic_with(bootstrap, many_values, args.partitions)
    per_partition = len(many_values) // args.partitions
    if len(many_values) % args.partitions:
        raise SystemExit("--events / --models must be a multiple of --partitions")
    shards = args.partitions * args.models
    print(
        f"one shard: {args.events:,} events; {shards} shards: {len(many_values):,} events on "
        f"{args.partitions} partitions by {args.models} models; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    runs: dict[str, list[Run]] = {"1 shard": [], f"{shards} shards": []}
    for r in range(args.rounds):
        for label, topic, models, per in (
            ("1 shard", one_topic, 1, len(one_values)),
            (f"{shards} shards", many_topic, args.models, per_partition),
        ):
            run = run_worker(bootstrap, redis_url, topic, models, per)
            runs[label].append(run)
            print(
                f"  round {r + 1}/{args.rounds} {label}: {run.rate:,.0f} events/s learned, "
                f"{run.checkpoints} checkpoints, "
                f"{1000 * run.checkpoint_seconds / max(run.checkpoints, 1):.2f} ms each, "
                f"{100 * run.checkpoint_share:.1f}% of the time checkpointing",
                flush=True,
            )
    print(f"\n{'case':<12} {'events/s':>10} {'ms/checkpoint':>14} {'% checkpointing':>16}")
    rates = {}
    for label, done in runs.items():
        rate = statistics.median(r.rate for r in done)
        rates[label] = rate
        per = statistics.median(1000 * r.checkpoint_seconds / max(r.checkpoints, 1) for r in done)
        share = statistics.median(100 * r.checkpoint_share for r in done)
        print(f"{label:<12} {rate:>10,.0f} {per:>14.2f} {share:>16.1f}")
    ratio = rates[f"{shards} shards"] / rates["1 shard"]
    print(f"\n{shards} shards / 1 shard: {ratio:.2f} (target ≥ 0.85)")
