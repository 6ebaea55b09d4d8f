"""The learning thread's budget for checkpoints (stream/_budget.py): a checkpoint that
costs much defers the next ones, never skipping or repeating an event."""

from __future__ import annotations

import logging
import time

import pytest

from livelearn import ConfigError
from livelearn.learners import SnapshotCodec, load_learner
from livelearn.settings import Settings, load_settings
from livelearn.stream._budget import CheckpointBudget
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.unit.test_worker_loop import (
    KEY,
    SHARD,
    FakeConsumer,
    FakeDlq,
    FakeStore,
    _records,
    _run,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_costly_checkpoint_defers_the_next_by_its_cost_over_the_share() -> None:
    clock = _Clock()
    budget = CheckpointBudget(0.1, clock)
    assert budget.allows()
    budget.spend(2.0)
    clock.now += 19.9
    assert not budget.allows() and budget.wait() == pytest.approx(0.1)
    assert budget.deferred_since == clock.now
    clock.now += 0.1
    assert budget.allows() and budget.wait() == 0.0


def test_many_cheap_checkpoints_share_one_budget() -> None:
    clock = _Clock()
    budget = CheckpointBudget(0.1, clock)
    clock.now += 60  # idle: the bucket saves up no more than its burst
    spent = 0
    while budget.allows():
        budget.spend(0.001)
        spent += 1
    assert 100 <= spent <= 101  # 0.1 s of burst at 1 ms each, and the one that overdraws it
    for _ in range(1000):  # 100 s at a pass every 0.1 s: checkpoints get 10 s of it
        clock.now += 0.1
        while budget.allows():
            budget.spend(0.001)
            spent += 1
    assert spent - 101 <= 10_001 and spent - 100 >= 9_900


def test_a_share_of_one_never_defers() -> None:
    budget = CheckpointBudget(1.0, _Clock())
    budget.spend(1e6)
    assert budget.allows()


@pytest.mark.parametrize("share", [0, -0.1, 1.5], ids=["zero", "negative", "above-one"])
def test_a_share_out_of_range_stops_start_up_naming_the_setting(share: float) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint\.max_share"):
        load_settings(None, checkpoint={"max_share": share})
    with pytest.raises(ValueError, match="max_share"):
        CheckpointBudget(share)


class _SlowStore(FakeStore):
    """A store whose writes take ``seconds``: a large model's encode and write."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def save(self, *args, **kwargs) -> int:
        time.sleep(self.seconds)
        return super().save(*args, **kwargs)


def _worker(store: FakeStore, share: float) -> tuple[Worker, FakeConsumer, WorkerMetrics]:
    settings = Settings(
        models=[
            {
                "name": "m",
                "topics": ["t"],
                "task": "binary",
                "pipeline": [{"class": "linear_model.LogisticRegression"}],
                "checkpoint": {"every_events": 10, "every_seconds": 0.001},
            }
        ],
        checkpoint={"max_share": share},
    )
    ref: list[Worker] = []
    consumer, metrics = FakeConsumer(ref), WorkerMetrics()
    worker = Worker(settings, consumer, store, FakeDlq(), SnapshotCodec(KEY), b"h" * 32, metrics)
    ref.append(worker)
    return worker, consumer, metrics


def test_costly_checkpoints_are_deferred_and_the_model_learns_every_event_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = _records(600)
    batches = [records[i : i + 20] for i in range(0, 600, 20)]
    exact = FakeStore()
    worker, consumer, _ = _worker(exact, 1.0)
    _run(worker, consumer, batches)
    assert len(exact.saves) >= 60  # every 10 events, at the spec's cadence

    slow = _SlowStore(0.1)  # each checkpoint defers the next by a second
    worker, consumer, metrics = _worker(slow, 0.1)
    with caplog.at_level(logging.WARNING, logger="livelearn.worker"):
        _run(worker, consumer, batches)
    offsets = [offset for _, offset in slow.saves]
    assert offsets[0] == 10 and offsets[-1] == 600
    assert len(offsets) < 10, offsets  # the loop learns 600 events in far less than 10 s
    assert offsets == sorted(offsets)
    codec = SnapshotCodec(KEY)
    deferred, spec_cadence = (load_learner(codec, s.rows[SHARD].blob) for s in (slow, exact))
    assert deferred.stats() == spec_cadence.stats()
    assert any("checkpoints deferred" in r.getMessage() for r in caplog.records)
    interval = metrics.registry.get_sample_value(
        "livelearn_checkpoint_interval_seconds", {"model": "m", "topic": "t", "partition": "0"}
    )
    assert interval is not None and interval > 0
