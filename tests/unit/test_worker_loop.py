"""The worker loop against in-memory fakes behind its Protocols (no network).

The same behaviours are proven on real Kafka and Redis in tests/integration.
"""

from __future__ import annotations

import time
from collections import namedtuple
from typing import Any

import orjson
import pytest
from kafka import TopicPartition

from livelearn import ServiceUnavailable, StaleEpochError, VersionConflict
from livelearn.learners import SnapshotCodec
from livelearn.settings import Settings
from livelearn.store.checkpoints import Checkpoint, ShardId
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker

# A consumed record; timestamp -1 is Kafka's "none" (the decoder then uses its clock).
Record = namedtuple("Record", "topic partition offset key value timestamp", defaults=(-1,))
KEY = b"unit-test-snapshot-key-000000000"


class FakeStore:
    """The checkpoint store in memory; ``down = True`` makes it answer as a stopped Redis,
    and ``lose_data()`` as a Redis restarted without persistence."""

    def __init__(self) -> None:
        self.claimed: dict[ShardId, int] = {}
        self.rows: dict[ShardId, Checkpoint] = {}
        self.saves: list[tuple[ShardId, int]] = []
        # What each save's timeline entry was given: (next_offset, event_ms, since).
        self.timeline: list[tuple[int, int | None, int]] = []
        self.down = False
        self.calls = 0  # calls that found the store down
        self._last_epoch = 0

    def _answer(self) -> None:
        if self.down:
            self.calls += 1
            raise ServiceUnavailable("Redis at fake:6379/0 does not answer: connection refused")

    def _bump(self, shard: ShardId) -> int:
        # As the Lua script: an epoch is never handed out twice, even after a data loss.
        self._last_epoch = max(self._last_epoch, self.claimed.get(shard, 0)) + 1
        self.claimed[shard] = self._last_epoch
        return self._last_epoch

    def claim(self, shard: ShardId) -> tuple[int, Checkpoint | None]:
        self._answer()
        return self._bump(shard), self.rows.get(shard)

    def reclaim(self, shard: ShardId, seen: int | None) -> int | None:
        self._answer()
        if self.claimed.get(shard) != seen:
            return None
        return self._bump(shard)

    def epochs(self, shards) -> list[int | None]:
        self._answer()
        return [self.claimed.get(shard) for shard in shards]

    def save(
        self, shard, epoch, blob, next_offset, stats, version, kid="", *, event_ms=None, since=-1
    ) -> int:
        self._answer()
        if self.claimed.get(shard) != epoch:
            raise StaleEpochError(str(shard), epoch, self.claimed.get(shard))
        stored = self.rows[shard].version if shard in self.rows else 0
        if version <= stored:  # as the Lua script
            raise VersionConflict(str(shard), version, stored)
        self.rows[shard] = Checkpoint(
            shard, blob, next_offset, epoch, stats, 0.0, len(blob), version, kid
        )
        self.saves.append((shard, next_offset))
        self.timeline.append((next_offset, event_ms, since))
        return version

    def load(self, shard: ShardId) -> Checkpoint | None:
        return self.rows.get(shard)

    def lose_data(self) -> None:
        self.claimed.clear()
        self.rows.clear()


class FakeDlq:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.flushes = 0

    def send(self, topic, value, key, *, reason, detail, source, model=None) -> None:
        self.sent.append({"topic": topic, "reason": reason, "source": source})

    def flush(self) -> None:
        self.flushes += 1


class FakeConsumer:
    """Hands out queued batches; the test drives assignment through the listener."""

    def __init__(self, worker_ref: list[Worker]) -> None:
        self.listener: Any = None
        self.batches: list[dict[TopicPartition, list[Record]]] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()
        self.resumed: list[TopicPartition] = []
        self.closed = False
        self._worker = worker_ref

    def subscribe(self, topics, listener) -> None:
        self.listener = listener

    def poll(self, timeout_ms: int = 0, max_records: int | None = None):
        if not self.batches:
            self._worker[0].stop()
            return {}
        return self.batches.pop(0)

    def seek(self, tp, offset) -> None:
        self.seeks[tp] = offset

    def seek_to_beginning(self, *tps) -> None:
        for tp in tps:
            self.seeks[tp] = 0

    def seek_to_end(self, *tps) -> None:
        raise AssertionError("not expected")

    def pause(self, *tps) -> None:
        self.paused.update(tps)

    def resume(self, *tps) -> None:
        self.paused.difference_update(tps)
        self.resumed.extend(tps)

    def beginning_offsets(self, tps) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    def end_offsets(self, tps) -> dict[TopicPartition, int]:
        """As if every queued record were on the broker already."""
        ends = {tp: 0 for tp in tps}
        for batch in self.batches:
            for tp, records in batch.items():
                if tp in ends and records:
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
        return ends

    def offsets_for_times(self, timestamps) -> dict[TopicPartition, Any]:
        return dict.fromkeys(timestamps)

    def commit(self, offsets) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def commit_async(self, offsets, callback) -> None:
        self.commit(offsets)

    def highwater(self, tp) -> int | None:
        return None

    def close(self) -> None:
        self.closed = True


def _settings(every_events: int = 1000) -> Settings:
    return Settings(
        models=[
            {
                "name": "m",
                "topics": ["t"],
                "task": "binary",
                "pipeline": [{"class": "linear_model.LogisticRegression"}],
                "checkpoint": {"every_events": every_events, "every_seconds": 3600},
            }
        ],
        # The spec's cadence exactly, whatever a checkpoint costs on a busy machine
        # (tests/unit/test_budget.py covers the deferral).
        checkpoint={"max_share": 1},
    )


def _records(n: int, start: int = 0, bad: frozenset[int] = frozenset()) -> list[Record]:
    out = []
    for i in range(start, start + n):
        value = (
            b"{bad"
            if i in bad
            else orjson.dumps({"id": str(i), "features": {"x": float(i % 7)}, "label": i % 2 == 0})
        )
        out.append(Record("t", 0, i, None, value))
    return out


def _worker(store: FakeStore, every_events: int = 1000) -> tuple[Worker, FakeConsumer, FakeDlq]:
    ref: list[Worker] = []
    consumer, dlq = FakeConsumer(ref), FakeDlq()
    worker = Worker(
        _settings(every_events),
        consumer,
        store,
        dlq,
        SnapshotCodec(KEY),
        b"h" * 32,
        WorkerMetrics(),
    )
    ref.append(worker)
    return worker, consumer, dlq


TP = TopicPartition("t", 0)
SHARD = ShardId("m", "t", 0)


def _run(worker: Worker, consumer: FakeConsumer, batches: list[list[Record]]) -> None:
    consumer.batches = [{TP: b} for b in batches]
    original = consumer.subscribe

    def subscribe(topics, listener) -> None:
        original(topics, listener)
        listener.on_partitions_assigned([TP])

    consumer.subscribe = subscribe  # type: ignore[method-assign]
    worker.run()


def test_each_checkpoint_gives_its_timeline_the_last_event_time_and_where_it_built_on() -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store, every_events=40)
    base_ms = int(time.time() * 1000) - 3_600_000
    records = [
        Record(
            "t",
            0,
            i,
            None,
            orjson.dumps(
                {"id": str(i), "ts": base_ms + 1000 * i, "features": {"x": 1.0}, "label": True}
            ),
            base_ms + 1000 * i + 700,  # Kafka's timestamp: not the event's time
        )
        for i in range(50)
    ]
    _run(worker, consumer, [records[:45], records[45:]])
    # A new shard builds on no checkpoint (-1).
    assert store.timeline == [(40, base_ms + 39_000, -1), (50, base_ms + 49_000, 40)]


def test_checkpoints_every_n_events_then_on_shutdown_and_commits_after() -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store, every_events=40)
    _run(worker, consumer, [_records(50), _records(50, start=50)])
    assert [offset for _, offset in store.saves] == [40, 80, 100]
    assert [c[TP] for c in consumer.commits] == [40, 80, 100]
    assert consumer.seeks[TP] == 0 and consumer.closed


def test_restart_resumes_from_the_checkpoint_and_skips_covered_events() -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store)
    _run(worker, consumer, [_records(30)])
    worker2, consumer2, _ = _worker(store)
    # The broker may redeliver events the checkpoint already covers.
    _run(worker2, consumer2, [_records(40, start=20)])
    assert consumer2.seeks[TP] == 30
    stats = store.rows[SHARD].stats
    assert stats["events_learned"] == 60 and store.rows[SHARD].next_offset == 60


def test_invalid_events_go_to_the_dlq_and_advance_the_offset() -> None:
    store = FakeStore()
    worker, consumer, dlq = _worker(store, every_events=5)
    _run(worker, consumer, [_records(10, bad=frozenset({3, 9}))])
    assert [d["source"] for d in dlq.sent] == [("t", 0, 3), ("t", 0, 9)]
    assert {d["reason"] for d in dlq.sent} == {"not_json"}
    assert dlq.flushes >= 1  # flushed before a checkpoint passed offset 3
    assert store.rows[SHARD].next_offset == 10
    assert store.rows[SHARD].stats["events_learned"] == 8


def test_a_tampered_snapshot_is_held_not_loaded() -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store)
    _run(worker, consumer, [_records(10)])
    row = store.rows[SHARD]
    blob = bytearray(row.blob)
    blob[-40] ^= 1
    store.rows[SHARD] = Checkpoint(
        SHARD, bytes(blob), row.next_offset, row.epoch, row.stats, 0.0, row.size, row.version
    )
    worker2, consumer2, _ = _worker(store)
    _run(worker2, consumer2, [_records(5, start=10)])
    assert TP in consumer2.paused
    assert store.rows[SHARD].blob == bytes(blob)
    refused = worker2._metrics.snapshots_refused.labels("m")._value.get()
    assert refused == 1


@pytest.mark.parametrize("models", [[]], ids=["no-models"])
def test_a_worker_needs_models(models) -> None:
    with pytest.raises(ValueError, match="no models"):
        Worker(
            Settings(models=models),
            FakeConsumer([]),
            FakeStore(),
            FakeDlq(),
            SnapshotCodec(KEY),
            b"h" * 32,
            WorkerMetrics(),
        )


def test_a_revoked_partition_leaves_no_stale_gauges() -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store, every_events=5)
    consumer.batches = [{TP: _records(10)}]
    consumer.subscribe = lambda topics, listener: listener.on_partitions_assigned([TP])  # type: ignore[method-assign]
    listener_holder: list[Any] = []

    def poll(timeout_ms: int = 0, max_records: int | None = None):
        if consumer.batches:
            return consumer.batches.pop(0)
        labels = {"model": "m", "topic": "t", "partition": "0"}
        registry = worker._metrics.registry
        assert registry.get_sample_value("livelearn_checkpoint_size_bytes", labels) is not None
        worker._revoke([TP])
        listener_holder.append(
            registry.get_sample_value(
                "livelearn_model_metric", {**labels, "metric": "Accuracy", "window": "rolling"}
            )
        )
        listener_holder.append(registry.get_sample_value("livelearn_checkpoint_size_bytes", labels))
        worker.stop()
        return {}

    consumer.poll = poll  # type: ignore[method-assign]
    worker.run()
    assert listener_holder == [None, None]
    assert store.rows[SHARD].next_offset == 10


def test_dead_letters_at_the_end_of_a_partition_reach_a_time_checkpoint() -> None:
    """The newest records of a partition are undecodable: the next time-due checkpoint
    still moves past them, as the consumer's lag already does, while the worker runs."""
    store = FakeStore()
    worker, consumer, dlq = _worker(store, every_events=10)
    consumer.batches = [{TP: _records(15, bad=frozenset(range(10, 15)))}]
    consumer.subscribe = lambda topics, listener: listener.on_partitions_assigned([TP])  # type: ignore[method-assign]
    due: list[list[int]] = []

    def poll(timeout_ms: int = 0, max_records: int | None = None):
        if consumer.batches:
            return consumer.batches.pop(0)
        worker._checkpoint_due(time.monotonic() + 3600)  # an hour on: every cadence is due
        due.append([offset for _, offset in store.saves])
        worker.stop()
        return {}

    consumer.poll = poll  # type: ignore[method-assign]
    worker.run()
    assert len(dlq.sent) == 5
    assert due == [[10, 15]]
