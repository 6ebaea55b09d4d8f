"""The worker's anti-rollback record and checks, and the format-1 migration (issue 18),
with the in-memory store and consumer of test_worker_loop."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from kafka.structs import OffsetAndMetadata

from livelearn.learners import Keyring, SnapshotCodec
from livelearn.settings import Settings
from livelearn.stream._ledger import KafkaLedger, LedgerCodec
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.unit import test_worker_loop as loop
from tests.unit.test_snapshot_binding import format_1

KEY, SHARD, TP = loop.KEY, loop.SHARD, loop.TP
FakeStore, _records, _run = loop.FakeStore, loop._records, loop._run


class RecordingConsumer(loop.FakeConsumer):
    """Keeps the metadata of each commit too: the group's committed record."""

    def __init__(self, ref: list[Worker]) -> None:
        super().__init__(ref)
        self.committed: dict[Any, OffsetAndMetadata] = {}

    def commit(self, offsets) -> None:
        super().commit(offsets)
        self.committed.update(offsets)


def _worker(
    store: FakeStore, committed: dict[Any, OffsetAndMetadata], **security: Any
) -> tuple[Worker, RecordingConsumer]:
    ref: list[Worker] = []
    consumer = RecordingConsumer(ref)
    consumer.committed = committed  # one group: what a worker commits, the next reads
    ring = Keyring({"k1": KEY}, "k1")
    ledger = KafkaLedger(LedgerCodec(ring, "g"), "g", {}, fetch=lambda tps: committed)
    settings = loop._settings(every_events=10)
    if security:
        settings = Settings(
            models=settings.models, security={"snapshot_key": KEY.decode(), **security}
        )
    worker = Worker(
        settings,
        consumer,
        store,
        loop.FakeDlq(),
        SnapshotCodec(ring, accept_legacy=bool(security.get("accept_legacy_snapshots"))),
        b"h" * 32,
        WorkerMetrics(),
        ledger=ledger,
    )
    ref.append(worker)
    return worker, consumer


def _refused(worker: Worker) -> float:
    return float(worker._metrics.snapshots_refused.labels("m")._value.get())


def test_each_commit_carries_a_signed_record_of_the_shards_versions() -> None:
    store, committed = FakeStore(), {}
    worker, _ = _worker(store, committed)
    _run(worker, worker._consumer, [_records(25)])  # type: ignore[arg-type]
    record = committed[TP]
    assert record.offset == 25
    floors = LedgerCodec(Keyring({"k1": KEY}, "k1"), "g").read(TP, record.metadata)
    assert floors == {"m": (store.rows[SHARD].version, 25)}


def _rolled_back(store: Any, committed: dict[Any, OffsetAndMetadata]) -> Any:
    """Learn 20 events, then 20 more; write the first checkpoint back whole (consistent
    with its signature); return it."""
    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [_records(20)])
    old = store.rows[SHARD]
    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [_records(20, start=20)])
    assert store.rows[SHARD].next_offset == 40
    store.rows[SHARD] = old
    return old


def test_an_older_checkpoint_than_kafkas_record_is_refused_and_held() -> None:
    store, committed = FakeStore(), {}
    old = _rolled_back(store, committed)

    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [_records(5, start=40)])
    assert _refused(worker) == 1
    assert TP in consumer.paused
    assert store.rows[SHARD] == old  # nothing overwritten
    # The record is kept: a commit while held does not lower it.
    floors = LedgerCodec(Keyring({"k1": KEY}, "k1"), "g").read(TP, committed[TP].metadata)
    assert floors["m"][1] == 40


def test_accept_rollback_lets_an_older_checkpoint_in_and_relearns_from_it() -> None:
    store, committed = FakeStore(), {}
    old = _rolled_back(store, committed)

    worker, consumer = _worker(store, committed, accept_rollback=True)
    _run(worker, consumer, [_records(25, start=20)])
    assert _refused(worker) == 0
    assert consumer.seeks[TP] == 20
    row = store.rows[SHARD]
    assert row.next_offset == 45 and row.stats["events_learned"] == 45
    assert row.version > old.version


def test_a_record_that_does_not_verify_is_ignored() -> None:
    store, committed = FakeStore(), {}
    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [_records(20)])
    forged = json.loads(committed[TP].metadata)
    forged["s"]["m"] = [999, 10_000]
    committed[TP] = OffsetAndMetadata(20, json.dumps(forged), -1)
    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [_records(5, start=20)])
    assert _refused(worker) == 0 and store.rows[SHARD].next_offset == 25


def test_a_format_1_checkpoint_is_held_unless_migrating_then_written_again_bound() -> None:
    store, committed = FakeStore(), {}
    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [_records(20)])
    row = store.rows[SHARD]
    learner = SnapshotCodec(Keyring({"k1": KEY}, "k1")).decode(row.blob)
    store.rows[SHARD] = dataclasses.replace(row, blob=format_1(KEY, learner))

    worker, consumer = _worker(store, committed)
    _run(worker, consumer, [])
    assert _refused(worker) == 1 and store.rows[SHARD].blob[6] == 1

    worker, consumer = _worker(store, committed, accept_legacy_snapshots=True)
    _run(worker, consumer, [_records(5, start=20)])
    assert _refused(worker) == 0
    after = store.rows[SHARD]
    assert after.blob[6] == 2 and after.next_offset == 25
    assert after.stats["events_learned"] == 25
