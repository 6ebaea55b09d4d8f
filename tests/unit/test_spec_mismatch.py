"""A shard checkpointed under another spec is held, counted and reported, never resumed."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from livelearn.learners import SnapshotCodec
from livelearn.settings import Settings
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.unit.test_worker_loop import (
    KEY,
    SHARD,
    TP,
    FakeConsumer,
    FakeDlq,
    FakeStore,
    _records,
    _run,
    _settings,
    _worker,
)


def _changed_worker(store: FakeStore) -> tuple[Worker, FakeConsumer]:
    """The model of test_worker_loop with a scaler before it and one feature excluded."""
    checkpointed = _settings().models[0].model_dump()
    changed = {
        **checkpointed,
        "pipeline": [{"class": "preprocessing.StandardScaler"}, *checkpointed["pipeline"]],
        "exclude": ["y"],
        # Not a learning field: a new cadence alone resumes the shard.
        "checkpoint": {"every_events": 7, "every_seconds": 3600},
    }
    settings = Settings(models=[changed])
    ref: list[Worker] = []
    consumer = FakeConsumer(ref)
    worker = Worker(
        settings, consumer, store, FakeDlq(), SnapshotCodec(KEY), b"h" * 32, WorkerMetrics()
    )
    ref.append(worker)
    return worker, consumer


def test_a_changed_pipeline_holds_the_shard(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store)
    _run(worker, consumer, [_records(10)])
    before = store.rows[SHARD]

    worker2, consumer2 = _changed_worker(store)
    consumer2.batches = [{TP: _records(5, start=10)}]
    consumer2.subscribe = lambda topics, listener: listener.on_partitions_assigned([TP])  # type: ignore[method-assign]
    readiness: list[tuple[bool, dict[str, Any]]] = []
    poll = consumer2.poll

    def poll_then_ask(timeout_ms: int = 0, max_records: int | None = None):
        if not consumer2.batches:
            readiness.append(worker2.readiness())
        return poll(timeout_ms, max_records)

    consumer2.poll = poll_then_ask  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="livelearn.worker"):
        worker2.run()

    assert TP in consumer2.paused
    assert store.rows[SHARD] == before  # nothing learned, nothing written
    registry = worker2._metrics.registry
    assert registry.get_sample_value("livelearn_spec_mismatch_total", {"model": "m"}) == 1
    assert registry.get_sample_value("livelearn_snapshots_refused_total", {"model": "m"}) is None
    assert (
        registry.get_sample_value("livelearn_events_total", {"model": "m", "outcome": "learned"})
        is None
    )
    [(ready, detail)] = readiness
    assert not ready and detail["refused_shards"] == [str(SHARD)]
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "model 'm'" in message and "pipeline, exclude" in message
    assert "livelearn models reset m --yes" in message


def test_an_unchanged_spec_resumes() -> None:
    store = FakeStore()
    worker, consumer, _ = _worker(store)
    _run(worker, consumer, [_records(10)])
    worker2, consumer2, _ = _worker(store)
    _run(worker2, consumer2, [_records(5, start=10)])
    assert store.rows[SHARD].next_offset == 15
    assert worker2._metrics.registry.get_sample_value(
        "livelearn_spec_mismatch_total", {"model": "m"}
    ) in (None, 0)
