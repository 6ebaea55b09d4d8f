"""The processing-error policy: an event that makes a shard raise is dead-lettered (or stops
the shard), and the shard ends exactly as River's own loop over the valid events only."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from river import linear_model, metrics, preprocessing

from livelearn import DeadLetterError
from livelearn.learners import Learner, SnapshotCodec, load_learner
from livelearn.settings import Settings
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.unit.test_worker_loop import SHARD, TP, FakeConsumer, FakeDlq, FakeStore, Record
from tests.unit.test_worker_loop import _run as run_batches

KEY = b"unit-test-snapshot-key-000000000"
PROBES = [{"x": -1.0, "y": 0.5}, {"x": 3.0, "y": -2.0}, {"x": 0.25, "y": 7.0}]


def _event(i: int) -> dict[str, Any]:
    return {
        "id": str(i),
        "features": {"x": float(i % 7) - 3, "y": (i % 5) / 2},
        "label": i % 3 == 0,
    }


def _worker(policy: str, every_events: int) -> tuple[Worker, FakeConsumer, FakeDlq, FakeStore]:
    settings = Settings(
        events={"on_processing_error": policy},
        checkpoint={"max_share": 1},  # every checkpoint when due, whatever it costs
        models=[
            {
                "name": "m",
                "topics": ["t"],
                "task": "binary",
                "pipeline": [
                    {"class": "preprocessing.StandardScaler"},
                    {"class": "linear_model.LogisticRegression"},
                ],
                "metrics": ["Accuracy", "LogLoss"],
                "checkpoint": {"every_events": every_events, "every_seconds": 3600},
            }
        ],
    )
    ref: list[Worker] = []
    store, consumer, dlq = FakeStore(), FakeConsumer(ref), FakeDlq()
    worker = Worker(settings, consumer, store, dlq, SnapshotCodec(KEY), b"h" * 32, WorkerMetrics())
    ref.append(worker)
    return worker, consumer, dlq, store


def _run(worker: Worker, consumer: FakeConsumer, values: list[bytes], batch: int = 25) -> None:
    records = [Record("t", 0, i, None, v) for i, v in enumerate(values)]
    run_batches(worker, consumer, [records[i : i + batch] for i in range(0, len(records), batch)])


def _rivers_loop(events: list[dict[str, Any]]) -> tuple[Any, dict[str, float]]:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy, logloss = metrics.Accuracy(), metrics.LogLoss()
    for e in events:
        proba = model.predict_proba_one(e["features"])
        accuracy.update(e["label"], max(proba, key=proba.get) if proba else None)
        logloss.update(e["label"], proba)
        model.learn_one(e["features"], e["label"])
    return model, {"Accuracy": accuracy.get(), "LogLoss": logloss.get()}


def _assert_same_as_river(learner: Learner, valid: list[dict[str, Any]]) -> None:
    reference, expected = _rivers_loop(valid)
    for x in PROBES:
        got, want = learner.model.predict_proba_one(x), reference.predict_proba_one(x)
        assert got.keys() == want.keys()
        assert all(math.isclose(got[k], want[k], rel_tol=0, abs_tol=1e-12) for k in want)
    stats = learner.stats()
    assert stats["events_learned"] == len(valid)
    for name, value in expected.items():
        assert math.isclose(stats["metrics"][name], value, rel_tol=0, abs_tol=1e-12), name


@pytest.mark.parametrize("every_events", [1000, 7], ids=["one-checkpoint", "many-checkpoints"])
def test_half_updated_learners_are_rolled_back_and_the_events_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, every_events: int
) -> None:
    """The worst case: an event fully applied to the model, metrics and drift, and only
    then an exception. The shard must end as if it never saw the event."""
    events = [_event(i) for i in range(120)]
    poisoned = {5, 6, 40, 41, 42, 99}  # alone and in runs, before and after checkpoints
    process = Learner.process

    def applied_then_raises(
        self: Learner, features: Any, label: Any, offset: int, ts_ms: int | None = None
    ) -> Any:
        result = process(self, features, label, offset, ts_ms)
        if offset in poisoned:
            raise RuntimeError(f"injected fault at offset {offset}")
        return result

    monkeypatch.setattr(Learner, "process", applied_then_raises)
    worker, consumer, dlq, store = _worker("dead_letter", every_events)
    _run(worker, consumer, [orjson.dumps(e) for e in events])
    assert [d["source"] for d in dlq.sent] == [("t", 0, i) for i in sorted(poisoned)]
    assert {d["reason"] for d in dlq.sent} == {"model_error"}
    row = store.rows[SHARD]
    assert row.next_offset == len(events)
    learner = load_learner(SnapshotCodec(KEY), row.blob)
    monkeypatch.undo()
    _assert_same_as_river(learner, [e for i, e in enumerate(events) if i not in poisoned])
    assert worker._metrics.processing_errors.labels("m", "dead_lettered")._value.get() == 6


def test_a_wrong_label_and_a_string_feature_leave_no_trace() -> None:
    """A label a binary model cannot learn ("yes": River would fail inside learn_one, after
    the metrics were updated) is refused before the learner sees it; a string feature fails
    inside River's scaler and is rolled back."""
    events = [_event(i) for i in range(60)]
    bad = {10: {**events[10], "label": "yes"}, 30: {**events[30], "features": {"x": "abc"}}}
    values = [orjson.dumps(bad.get(i, e)) for i, e in enumerate(events)]
    worker, consumer, dlq, store = _worker("dead_letter", 1000)
    _run(worker, consumer, values)
    assert [(d["source"], d["reason"]) for d in dlq.sent] == [
        (("t", 0, 10), "bad_label"),
        (("t", 0, 30), "model_error"),
    ]
    learner = load_learner(SnapshotCodec(KEY), store.rows[SHARD].blob)
    _assert_same_as_river(learner, [e for i, e in enumerate(events) if i not in bad])


def test_stop_shard_holds_the_shard_at_the_event_and_keeps_what_it_learned() -> None:
    events = [_event(i) for i in range(50)]
    values = [orjson.dumps(e) for e in events]
    values[20] = orjson.dumps({**events[20], "features": {"x": "abc"}})
    worker, consumer, dlq, store = _worker("stop_shard", 1000)
    seen: list[tuple[bool, dict[str, Any]]] = []
    poll = consumer.poll

    def poll_then_look(timeout_ms: int = 0, max_records: int | None = None) -> Any:
        if not consumer.batches:  # the stream is done: what /readyz says before shutdown
            seen.append(worker.readiness())
        return poll(timeout_ms, max_records)

    consumer.poll = poll_then_look  # type: ignore[method-assign]
    _run(worker, consumer, values)
    assert dlq.sent == []  # the event stays in Kafka for whoever fixes the model
    row = store.rows[SHARD]
    assert row.next_offset == 20
    _assert_same_as_river(load_learner(SnapshotCodec(KEY), row.blob), events[:20])
    assert TP in consumer.paused
    ready, detail = seen[0]
    assert not ready and detail["refused_shards"] == [str(SHARD)]
    assert worker._metrics.processing_errors.labels("m", "shard_stopped")._value.get() == 1


class _LosingDlq(FakeDlq):
    """A dead-letter sink whose broker acknowledges nothing for its first ``failing``
    flushes: as the real sink, it keeps the letters it could not deliver."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing

    def flush(self) -> None:
        super().flush()
        if self.sent and self.flushes <= self.failing:
            sources = [d["source"] for d in self.sent]
            raise DeadLetterError(sources, ["broker unreachable"] * len(sources))
        self.sent = []


def _dead_letters_up(worker: Worker) -> float:
    return float(worker._metrics.dependency_up.labels("dead_letters")._value.get())


def test_an_unacknowledged_dead_letter_pauses_its_partition_and_nothing_passes_it() -> None:
    events = [_event(i) for i in range(30)]
    values = [orjson.dumps(e) for e in events]
    values[15] = b"{not json"
    worker, consumer, _, store = _worker("dead_letter", 10)
    worker._dlq = dlq = _LosingDlq(failing=10**9)
    _run(worker, consumer, values, batch=30)
    # Offsets 0-9 were checkpointed before the bad event; the checkpoint due at 20 needed
    # the dead letter of offset 15 first, and it was not acknowledged: nothing passes
    # offset 10, not even at shutdown (after a last try); restarted, it is sent again.
    assert [offset for _, offset in store.saves] == [10]
    assert TP in consumer.paused
    assert dlq.flushes >= 2 and [d["source"] for d in dlq.sent] == [("t", 0, 15)]
    assert worker._metrics.dead_letter_failures.labels("t")._value.get() >= 1
    assert _dead_letters_up(worker) == 0
    ready, detail = worker.readiness()
    assert not ready and detail["dead_letters"] is False and detail["undelivered"] == ["t/0"]


def test_once_the_dead_letter_is_acknowledged_its_partition_resumes_exactly_once() -> None:
    events = [_event(i) for i in range(60)]
    values = [orjson.dumps(e) for e in events]
    values[15] = b"{not json"
    worker, consumer, _, store = _worker("dead_letter", 10)
    worker._dlq = dlq = _LosingDlq(failing=1)
    paused_at_polls: list[bool] = []
    poll = consumer.poll

    def poll_and_look(timeout_ms: int = 0, max_records: int | None = None) -> Any:
        paused_at_polls.append(TP in consumer.paused)
        return poll(timeout_ms, max_records)

    consumer.poll = poll_and_look  # type: ignore[method-assign]
    _run(worker, consumer, values, batch=30)
    # The first flush failed: paused at the next poll; the retry delivered it.
    assert paused_at_polls[1] and TP not in consumer.paused and TP in consumer.resumed
    assert dlq.flushes >= 2 and dlq.sent == []
    assert store.saves[0][1] == 10 and store.saves[-1][1] == 60
    assert all(offset != 20 for _, offset in store.saves[:2])  # none passed it unacknowledged
    assert _dead_letters_up(worker) == 1
    _assert_same_as_river(
        load_learner(SnapshotCodec(KEY), store.rows[SHARD].blob),
        [e for i, e in enumerate(events) if i != 15],
    )
