"""The worker's Redis side against fakes: outages ridden out, light rebalance callbacks,
fencing that never silently stops a shard, and where a new shard starts.

The same behaviours run on a real Kafka broker and a private redis-server in
tests/integration/test_redis_outages.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndTimestamp

from livelearn import ServiceUnavailable
from livelearn.learners import Learner, SnapshotCodec, load_learner
from livelearn.settings import Settings
from livelearn.store.checkpoints import ShardId
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.unit.test_worker_loop import (
    KEY,
    SHARD,
    TP,
    FakeConsumer,
    FakeDlq,
    FakeStore,
    Record,
    _records,
)

FAST_RETRIES = {"retry_initial_s": 0.001, "retry_max_s": 0.005}


@dataclass
class Until:
    """A script step: poll empty until ``condition()`` holds (the test fails past ``timeout``)."""

    condition: Callable[[], Any]
    what: str
    timeout: float = 10.0
    deadline: float | None = None


Batch = dict[TopicPartition, list[Record]]
Step = Batch | Callable[[], Any] | Until


class Scripted(FakeConsumer):
    """Serves a script of batches, actions and waits; an action may return the batch to
    serve. A batch of a paused partition waits until the worker resumes it, as on a
    broker. The script's end stops the worker."""

    def __init__(self, worker_ref: list[Worker], steps: list[Step]) -> None:
        super().__init__(worker_ref)
        self.steps = list(steps)
        self.served: list[int] = []  # offsets handed out

    def subscribe(self, topics, listener) -> None:
        super().subscribe(topics, listener)
        listener.on_partitions_assigned([TP])

    def poll(self, timeout_ms: int = 0, max_records: int | None = None):
        while self.steps:
            step = self.steps[0]
            if isinstance(step, Until):
                if step.condition():
                    self.steps.pop(0)
                    continue
                step.deadline = step.deadline or time.monotonic() + step.timeout
                assert time.monotonic() < step.deadline, f"timed out waiting for {step.what}"
                return self._idle()
            if callable(step):
                self.steps.pop(0)
                batch = step()
                if isinstance(batch, dict):
                    self.steps.insert(0, batch)
                continue
            if any(tp in self.paused for tp in step):
                return self._idle()  # not fetched while paused
            self.steps.pop(0)
            for records in step.values():
                self.served += [r.offset for r in records]
            return step
        self._worker[0].stop()
        return {}

    def _idle(self) -> dict[TopicPartition, list[Record]]:
        time.sleep(0.001)  # a poll that times out with nothing
        return {}


def _settings(every_events: int = 5, **sections: Any) -> Settings:
    model = {
        "name": "m",
        "topics": ["t"],
        "task": "binary",
        "pipeline": [
            {"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LogisticRegression"},
        ],
        "checkpoint": {"every_events": every_events, "every_seconds": 3600},
    }
    models = sections.pop("models", [model])
    outage = {**FAST_RETRIES, **sections.pop("outage", {})}
    # The spec's cadence exactly, whatever a checkpoint costs on a busy machine: the steps
    # count on which events each checkpoint holds (tests/unit/test_budget.py covers the
    # deferral).
    sections.setdefault("checkpoint", {"max_share": 1})
    return Settings(outage=outage, models=models, **sections)


def _worker(
    store: FakeStore, steps: list[Step], settings: Settings | None = None
) -> tuple[Worker, Scripted]:
    ref: list[Worker] = []
    consumer = Scripted(ref, steps)
    worker = Worker(
        settings or _settings(),
        consumer,
        store,
        FakeDlq(),
        SnapshotCodec(KEY),
        b"h" * 32,
        WorkerMetrics(),
    )
    ref.append(worker)
    return worker, consumer


def _learner(store: FakeStore, shard: ShardId = SHARD) -> Learner:
    return load_learner(SnapshotCodec(KEY), store.rows[shard].blob)


def _reference(n: int) -> Learner:
    """The shard learned from records 0..n-1 once each, without any fault."""
    store = FakeStore()
    worker, _ = _worker(store, [{TP: _records(n)}])
    worker.run()
    return _learner(store)


def _assert_same(learner: Learner, reference: Learner) -> None:
    assert learner.stats() == reference.stats()
    for i in range(7):
        x = {"x": float(i)}
        got, want = learner.predict_proba_one(x), reference.predict_proba_one(x)
        assert all(math.isclose(got[k], want[k], abs_tol=1e-12) for k in want)


def _sample(worker: Worker, name: str, labels: dict[str, str] | None = None) -> float | None:
    return worker._metrics.registry.get_sample_value(name, labels or {})


def _redis_up(worker: Worker) -> float | None:
    return _sample(worker, "livelearn_dependency_up", {"dependency": "redis"})


# -- outages ----------------------------------------------------------------------------


def test_redis_down_at_a_checkpoint_pauses_learning_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    records = _records(60)
    seen: dict[str, Any] = {}

    def down() -> None:
        store.down = True

    def during() -> None:
        seen["ready"] = worker.readiness()
        seen["up"] = _redis_up(worker)
        seen["paused"] = TP in consumer.paused
        seen["saves"] = len(store.saves)

    def up() -> None:
        store.down = False

    steps: list[Step] = [
        {TP: records[:20]},
        down,
        {TP: records[20:30]},  # the checkpoint at 25 finds Redis down
        Until(lambda: store.calls >= 3, "three retries against the stopped store"),
        during,
        up,
        {TP: records[30:40]},  # served once the worker resumes the partition
        {TP: records[40:60]},
    ]
    worker, consumer = _worker(store, steps)
    with caplog.at_level(logging.INFO):
        worker.run()  # never raises

    ready, detail = seen["ready"]
    assert not ready and detail["redis"] is False
    assert seen["up"] == 0 and seen["paused"]
    assert seen["saves"] == 4  # 5, 10, 15, 20: nothing was written while Redis was down
    assert _redis_up(worker) == 1
    assert consumer.served == list(range(60))  # nothing fetched twice, nothing skipped
    assert store.rows[SHARD].next_offset == 60
    _assert_same(_learner(store), _reference(60))
    # What waited in memory landed as soon as Redis answered, before anything new.
    assert [o for _, o in store.saves][4] == 30
    # Offsets are committed only once a checkpoint covers them.
    saved = {o for _, o in store.saves}
    assert {c[TP] for c in consumer.commits} <= saved
    messages = [r.getMessage() for r in caplog.records]
    assert any("Redis does not answer: learning paused" in m for m in messages)
    assert any("Redis answers again after" in m for m in messages)
    assert _sample(worker, "livelearn_checkpoints_total", {"model": "m", "trigger": "retry"}) == 1


def test_redis_down_past_the_bound_exits_with_service_unavailable() -> None:
    store = FakeStore()

    def down() -> None:
        store.down = True

    steps: list[Step] = [
        {TP: _records(12)},
        down,
        {TP: _records(8, start=12)},
        Until(lambda: False, "the worker to give up", timeout=30),
    ]
    worker, consumer = _worker(store, steps, _settings(outage={"timeout_s": 0.2}))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        worker.run()
    message = str(info.value)
    assert "Redis" in message and "LIVELEARN_OUTAGE__TIMEOUT_S" in message
    assert "outage.timeout_s=0.2" in message and "connection refused" in message
    assert 0.2 <= time.monotonic() - started < 10
    assert consumer.closed
    assert store.rows[SHARD].next_offset == 10  # the last checkpoint stands


def test_a_worker_started_while_redis_is_down_waits_then_learns() -> None:
    store = FakeStore()
    store.down = True
    seen: dict[str, Any] = {}

    def during() -> None:
        seen["ready"] = worker.readiness()
        seen["up"] = _redis_up(worker)

    def up() -> None:
        store.down = False

    steps: list[Step] = [
        Until(lambda: store.calls >= 3, "retries while Redis is down"),
        during,
        up,
        {TP: _records(30)},
    ]
    worker, consumer = _worker(store, steps)
    worker.run()
    ready, detail = seen["ready"]
    assert not ready
    assert detail["redis"] is False and detail["claiming"] == ["t/0"]
    assert seen["up"] == 0 and _redis_up(worker) == 1
    assert consumer.seeks[TP] == 0
    _assert_same(_learner(store), _reference(30))


# -- rebalance callbacks ----------------------------------------------------------------


class CountingStore(FakeStore):
    """A FakeStore that counts every call."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def claim(self, shard):
        self.ops += 1
        return super().claim(shard)

    def save(self, *args, **kwargs):
        self.ops += 1
        return super().save(*args, **kwargs)

    def epochs(self, shards):
        self.ops += 1
        return super().epochs(shards)


def test_rebalance_callbacks_touch_neither_redis_nor_kafka_offsets() -> None:
    store = CountingStore()
    seen: dict[str, Any] = {}

    def rebalance() -> None:
        ops = store.ops
        seeks = dict(consumer.seeks)
        worker._revoke([TP])
        worker._assign([TP, TopicPartition("t", 1)])
        seen["ops"] = store.ops - ops
        seen["seeks"] = consumer.seeks == seeks
        seen["paused"] = set(consumer.paused)
        seen["ready"] = worker.readiness()

    steps: list[Step] = [{TP: _records(8)}, rebalance, {TP: _records(4, start=8)}]
    worker, consumer = _worker(store, steps)
    worker.run()
    assert seen["ops"] == 0 and seen["seeks"]
    assert seen["paused"] == {TP, TopicPartition("t", 1)}  # until claimed by the loop
    assert seen["ready"][1]["claiming"] == ["t/0", "t/1"]
    count = _sample(worker, "livelearn_rebalance_callback_seconds_count", {"callback": "assigned"})
    assert count == 2  # at subscription, and in the rebalance
    total = _sample(worker, "livelearn_rebalance_callback_seconds_sum", {"callback": "revoked"})
    assert total is not None and total < 1.0  # wall time, on a loaded machine too
    assert store.rows[SHARD].next_offset == 12
    _assert_same(_learner(store), _reference(12))


def test_a_partition_assigned_back_keeps_its_learner_and_position() -> None:
    store = FakeStore()
    seen: dict[str, Any] = {}

    def rebalance() -> None:
        seen["shard"] = worker._partitions[TP].shards[0]
        worker._revoke([TP])
        worker._assign([TP])

    steps: list[Step] = [
        {TP: _records(8)},  # checkpointed at 5, three events pending
        rebalance,
        Until(lambda: TP in worker._partitions, "the partition to be claimed again"),
        lambda: seen.setdefault("after", worker._partitions[TP].shards[0]),
        {TP: _records(4, start=8)},
    ]
    worker, consumer = _worker(store, steps)
    worker.run()
    assert seen["after"] is seen["shard"]  # not restored from Redis: kept
    assert [o for _, o in store.saves][:2] == [5, 8]  # the pending events saved first
    assert consumer.seeks[TP] == 8
    _assert_same(_learner(store), _reference(12))


def test_a_revoked_shard_whose_new_owner_came_first_is_relearned_exactly_once() -> None:
    store = FakeStore()

    def handed_over() -> None:
        worker._revoke([TP])
        store.claim(SHARD)  # the new owner claims before the late save

    steps: list[Step] = [{TP: _records(8)}, handed_over, Until(lambda: True, "a turn")]
    worker, _ = _worker(store, steps)
    worker.run()
    assert store.rows[SHARD].next_offset == 5  # the late save was refused
    assert _sample(worker, "livelearn_stale_epoch_total", {"model": "m"}) is None
    # The new owner resumes from 5, and events 5..7 are learned once, by it.
    new_owner, consumer = _worker(store, [{TP: _records(15, start=5)}])
    new_owner.run()
    assert consumer.seeks[TP] == 5
    _assert_same(_learner(store), _reference(20))


# -- fencing ----------------------------------------------------------------------------


def test_a_fenced_shard_is_counted_reported_and_claimed_again_from_its_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    seen: dict[str, Any] = {}

    def fenced() -> None:
        seen["ready"] = worker.readiness()
        seen["paused"] = TP in consumer.paused
        worker._fence_grace_s = 0  # the group still assigns the partition here

    steps: list[Step] = [
        {TP: _records(10)},
        lambda: store.claim(SHARD),  # another worker, or a model reset, takes the epoch
        {TP: _records(5, start=10)},  # the checkpoint at 15 is refused
        fenced,
        {TP: _records(10, start=10)},  # once claimed again, from its checkpoint's offset
    ]
    worker, consumer = _worker(store, steps)
    worker._fence_grace_s = 3600
    with caplog.at_level(logging.INFO):
        worker.run()
    ready, detail = seen["ready"]
    assert not ready and detail["fenced_shards"] == [str(SHARD)]
    assert seen["paused"]
    assert _sample(worker, "livelearn_stale_epoch_total", {"model": "m"}) == 1
    assert consumer.seeks[TP] == 10
    assert store.rows[SHARD].next_offset == 20
    _assert_same(_learner(store), _reference(20))
    assert any("fenced out" in r.getMessage() for r in caplog.records)


def test_a_fenced_shard_whose_partition_is_revoked_goes_to_its_new_owner() -> None:
    store = FakeStore()
    seen: dict[str, Any] = {}

    def revoked() -> None:
        seen["before"] = worker.readiness()[1]["fenced_shards"]
        worker._revoke([TP])
        seen["after"] = worker.readiness()[1]["fenced_shards"]

    steps: list[Step] = [
        {TP: _records(10)},
        lambda: store.claim(SHARD),
        {TP: _records(5, start=10)},
        revoked,
    ]
    worker, _ = _worker(store, steps)
    worker.run()
    assert seen == {"before": [str(SHARD)], "after": []}
    assert store.rows[SHARD].next_offset == 10  # the zombie wrote nothing


@pytest.mark.parametrize("idle", [False, True], ids=["at-a-checkpoint", "idle"])
def test_a_claim_redis_lost_is_taken_back_and_the_state_written_from_memory(
    idle: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeStore()

    def probe_now() -> None:
        worker._next_probe = 0.0

    written_again = Until(lambda: SHARD in store.rows, "the shard to be written again")
    steps: list[Step] = [
        {TP: _records(23)},  # checkpointed at 20, three pending
        store.lose_data,  # Redis restarted without its data
    ]
    if idle:  # the periodic check finds it (here at once)
        steps += [probe_now, written_again, {TP: _records(7, start=23)}]
    else:  # the checkpoint at 25 is refused
        steps += [{TP: _records(2, start=23)}, written_again, {TP: _records(5, start=25)}]
    worker, consumer = _worker(store, steps)
    with caplog.at_level(logging.WARNING):
        worker.run()
    assert consumer.seeks == {TP: 0}  # never sought back: nothing is learned again
    assert consumer.served == list(range(30))
    assert store.rows[SHARD].next_offset == 30
    _assert_same(_learner(store), _reference(30))
    assert _sample(worker, "livelearn_stale_epoch_total", {"model": "m"}) == 1
    assert any("Redis lost the claim" in r.getMessage() for r in caplog.records)


# -- where a new shard starts -----------------------------------------------------------


class TopicConsumer(Scripted):
    """A partition holding records ``first``..``last``-1, record i at time i seconds,
    served from where the worker seeks."""

    def __init__(self, worker_ref: list[Worker], first: int, last: int) -> None:
        super().__init__(worker_ref, [self._from_the_seek])
        self.records = _records(last - first, start=first)
        self.end = last

    def _from_the_seek(self) -> Batch:
        return {TP: [r for r in self.records if r.offset >= self.seeks[TP]]}

    def end_offsets(self, tps):
        return dict.fromkeys(tps, self.end)

    def offsets_for_times(self, timestamps):
        return {
            tp: OffsetAndTimestamp(math.ceil(ms / 1000), ms, -1) if ms < self.end * 1000 else None
            for tp, ms in timestamps.items()
        }


def _model(name: str, start: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "topics": ["t"],
        "task": "binary",
        "pipeline": [{"class": "linear_model.LogisticRegression"}],
        "checkpoint": {"every_events": 1000, "every_seconds": 3600},
    }
    if start is not None:
        spec["start"] = start
    return spec


def _run_models(
    store: FakeStore, models: list[dict[str, Any]], first: int, last: int, reset: str = "earliest"
) -> TopicConsumer:
    settings = _settings(models=models, kafka={"auto_offset_reset": reset})
    ref: list[Worker] = []
    consumer = TopicConsumer(ref, first, last)
    worker = Worker(
        settings, consumer, store, FakeDlq(), SnapshotCodec(KEY), b"h" * 32, WorkerMetrics()
    )
    ref.append(worker)
    worker.run()
    return consumer


def _learned(store: FakeStore, model: str) -> int:
    return int(_learner(store, ShardId(model, "t", 0)).stats()["events_learned"])


@pytest.mark.parametrize(
    ("start", "reset", "first"),
    [
        (None, "earliest", 0),
        (None, "latest", 60),
        ("earliest", "latest", 0),
        ("latest", "earliest", 60),
        (datetime.fromtimestamp(40, UTC).isoformat(), "earliest", 40),
        (datetime.fromtimestamp(40.5, UTC).isoformat(), "latest", 41),
        (datetime.fromtimestamp(3600, UTC).isoformat(), "earliest", 60),  # nothing since
    ],
    ids=[
        "default-earliest",
        "default-latest",
        "earliest",
        "latest",
        "time",
        "time-between",
        "time-after-the-end",
    ],
)
def test_a_new_shard_starts_where_its_spec_says(start: Any, reset: str, first: int) -> None:
    store = FakeStore()
    consumer = _run_models(store, [_model("a", start)], 0, 60, reset)
    assert consumer.seeks[TP] == first
    assert _learned(store, "a") == 60 - first
    assert store.rows[ShardId("a", "t", 0)].next_offset == 60


def test_a_start_other_than_earliest_is_checkpointed_at_once_and_resolved_only_once() -> None:
    store = FakeStore()
    _run_models(store, [_model("a", "latest")], 0, 30)
    # Written before any event: a restart resumes there even if the end has moved on.
    assert store.saves[0] == (ShardId("a", "t", 0), 30)
    consumer = _run_models(store, [_model("a", "latest")], 0, 50)
    assert consumer.seeks[TP] == 30 and _learned(store, "a") == 20


def test_models_added_renamed_or_removed_never_move_the_others() -> None:
    store = FakeStore()
    _run_models(store, [_model("a"), _model("b")], 0, 30)
    # b is renamed c (a new model, from the end), a new model d starts at a time, and a
    # is removed and later added back: each resumes from its own checkpoint.
    at_35 = datetime.fromtimestamp(35, UTC).isoformat()
    consumer = _run_models(store, [_model("c", "latest"), _model("d", at_35), _model("b")], 0, 50)
    assert consumer.seeks[TP] == 30  # b's checkpoint: the earliest of them
    assert (_learned(store, "b"), _learned(store, "c"), _learned(store, "d")) == (50, 0, 15)
    consumer = _run_models(store, [_model("a", "latest"), _model("b")], 0, 60)
    assert consumer.seeks[TP] == 30  # a's checkpoint, whatever its start says now
    assert (_learned(store, "a"), _learned(store, "b")) == (60, 60)
