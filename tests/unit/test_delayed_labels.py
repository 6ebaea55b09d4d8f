"""Delayed labels joined to the predictions they score (spec ``delayed_labels``)."""

from __future__ import annotations

import math
import pickle
import random
import time
from typing import Any

import orjson
import pytest
from river import datasets, linear_model, metrics, optim, preprocessing

from livelearn.errors import InvalidEvent
from livelearn.learners import (
    Learner,
    ModelSpec,
    SnapshotCodec,
    load_learner,
    spec_changes,
    spec_fingerprint,
)
from tests.unit.test_worker_loop import FakeStore

PIPELINE = [
    {"class": "preprocessing.StandardScaler"},
    {
        "class": "linear_model.LogisticRegression",
        "params": {"optimizer": {"class": "optim.SGD", "params": {"lr": 0.1}}},
    },
]


def _spec(**delayed: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "late",
            "topics": ["t"],
            "task": "binary",
            "pipeline": PIPELINE,
            "metrics": ["Accuracy", "LogLoss"],
            "delayed_labels": delayed,
        }
    )


def _timeline(n: int, seed: int) -> list[tuple[str, float, str, Any]]:
    """Predictions one second apart, each label 0-60 s later: (kind, time, id, payload) in
    arrival order, labels out of order."""
    rng = random.Random(seed)
    arrivals = []
    for i, (x, y) in enumerate(datasets.Phishing()):
        if i == n:
            break
        t = float(i)
        arrivals.append(("predict", t, f"e{i}", x))
        arrivals.append(("label", t + rng.uniform(0, 60) + 0.5, f"e{i}", y))
    return sorted(arrivals, key=lambda a: (a[1], a[0] == "predict"))


def _rivers_loop(timeline: list[tuple[str, float, str, Any]]) -> tuple[Any, dict[str, float]]:
    """River's own model and metrics: each prediction made when its features arrive, scored
    and learned when its label arrives (what progressive_val_score does with a delay)."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(0.1))
    accuracy, logloss = metrics.Accuracy(), metrics.LogLoss()
    kept: dict[str, tuple[dict[str, Any], dict[Any, float]]] = {}
    for kind, _, event_id, payload in timeline:
        if kind == "predict":
            kept[event_id] = (payload, model.predict_proba_one(payload))
            continue
        x, proba = kept.pop(event_id)
        accuracy.update(payload, max(proba, key=proba.get) if proba else None)
        if proba:
            logloss.update(payload, proba)
        model.learn_one(x, payload)
    return model, {"Accuracy": accuracy.get(), "LogLoss": logloss.get()}


def _feed(learner: Learner, timeline: list[tuple[str, float, str, Any]], start: int = 0) -> None:
    for offset, (kind, t, event_id, payload) in enumerate(timeline[start:], start):
        if kind == "predict":
            learner.predict_pending(event_id, payload, offset, int(t * 1000))
        else:
            learner.join(event_id, payload, offset, int(t * 1000))


def _assert_same(learner: Learner, reference: Any, expected: dict[str, float]) -> None:
    probes = [x for x, _ in datasets.Phishing()][1100:1150]
    for x in probes:
        got, want = learner.predict_proba_one(x), reference.predict_proba_one(x)
        assert all(math.isclose(got[k], want[k], rel_tol=0, abs_tol=1e-12) for k in want)
    stats = learner.stats()
    for name, value in expected.items():
        assert math.isclose(stats["metrics"][name], value, rel_tol=0, abs_tol=1e-12), name


def test_labels_late_and_out_of_order_give_rivers_loop_in_label_arrival_order() -> None:
    timeline = _timeline(800, seed=7)
    learner = Learner(_spec())
    _feed(learner, timeline)
    _assert_same(learner, *_rivers_loop(timeline))
    stats = learner.stats()
    assert stats["events_learned"] == stats["events_scored"] == 800
    assert stats["labels"] == {"joined": 800, "expired": 0, "pending": 0}


@pytest.mark.parametrize("cut", [1, 333, 1201])
def test_a_snapshot_mid_stream_keeps_the_pending_predictions(cut: int) -> None:
    """A checkpoint holds the pending predictions: a restart joins them exactly once."""
    timeline = _timeline(800, seed=11)
    learner = Learner(_spec())
    _feed(learner, timeline[:cut])
    restored: Learner = pickle.loads(pickle.dumps(learner))
    assert restored.pending_labels == learner.pending_labels > 0
    _feed(restored, timeline, start=cut)
    _assert_same(restored, *_rivers_loop(timeline))


def test_pending_predictions_expire_by_count_and_by_event_time_and_their_labels_are_late() -> None:
    learner = Learner(_spec(max_pending=3, max_age_s=10))
    x = {"a": 1.0}
    for i in range(5):  # e0 and e1 pushed out by count
        learner.predict_pending(f"e{i}", x, i, 1000 * i)
    learner.predict_pending("e5", x, 5, 12_500)  # e2 (t=2 s) is now older than 10 s
    assert learner.label_counts == {"joined": 0, "expired": 3}
    assert learner.pending_labels == 3
    with pytest.raises(InvalidEvent) as late:
        learner.join("e0", True, 6, 14_000)
    assert late.value.reason == "label_late"
    assert learner.join("e4", True, 7, 14_500) == pytest.approx(10.5)
    with pytest.raises(InvalidEvent) as twice:
        learner.join("e4", False, 8, 15_000)
    assert twice.value.reason == "label_duplicate"
    with pytest.raises(InvalidEvent) as stray:
        learner.join("nobody", True, 9, 15_000)
    assert stray.value.reason == "label_unmatched"
    with pytest.raises(InvalidEvent) as again:
        learner.predict_pending("e5", x, 10, 15_000)
    assert again.value.reason == "duplicate_id"
    assert learner.stats()["events_learned"] == 1
    assert learner.stats()["labels"] == {"joined": 1, "expired": 3, "pending": 2}


def test_a_learner_without_delayed_labels_refuses_to_keep_predictions() -> None:
    spec = _spec().model_copy(update={"delayed_labels": None})
    with pytest.raises(TypeError, match="with its features"):
        Learner(spec).predict_pending("e", {"a": 1.0}, 0, 0)
    assert "labels" not in Learner(spec).stats()


def test_delayed_labels_are_part_of_the_fingerprint_and_older_specs_keep_theirs() -> None:
    plain = _spec().model_copy(update={"delayed_labels": None})
    assert spec_changes(plain, _spec()) == ["delayed_labels"]
    # A spec pickled before the field existed has the same fingerprint as one without it.
    state = plain.__getstate__()
    del state["__dict__"]["delayed_labels"]
    older = ModelSpec.__new__(ModelSpec)
    older.__setstate__(state)
    assert spec_fingerprint(older) == spec_fingerprint(plain)


# --- the worker's loop ---------------------------------------------------------------------


def _records(timeline: list[tuple[str, float, str, Any]]) -> list[Any]:
    """Prediction events (features, no label) and label-only events, in arrival order."""
    from tests.unit.test_worker_loop import Record

    base_ms = int(time.time() * 1000) - 3_600_000
    out = []
    for offset, (kind, t, event_id, payload) in enumerate(timeline):
        body: dict[str, Any] = {"id": event_id, "ts": base_ms + int(t * 1000)}
        body["features" if kind == "predict" else "label"] = payload
        out.append(Record("t", 0, offset, None, orjson.dumps(body)))
    return out


class _RecordingStore(FakeStore):
    """A FakeStore that keeps a copy of its rows after every save (crash points)."""

    def __init__(self, rows: dict[Any, Any] | None = None) -> None:
        super().__init__()
        self.rows.update(rows or {})
        self.history: list[dict[Any, Any]] = []

    def save(self, *args: Any, **kwargs: Any) -> int:
        version = super().save(*args, **kwargs)
        self.history.append(dict(self.rows))
        return version


def _late_worker(store: Any) -> tuple[Any, Any, Any]:
    from livelearn.settings import Settings
    from livelearn.stream.metrics import WorkerMetrics
    from livelearn.stream.worker import Worker
    from tests.unit.test_worker_loop import FakeConsumer, FakeDlq

    late = _spec().model_dump(by_alias=True, exclude_none=True)
    late["checkpoint"] = {"every_events": 97, "every_seconds": 3600}
    inline = {**late, "name": "inline"}
    inline.pop("delayed_labels")
    # The spec's cadence exactly: the crash points are its checkpoints.
    settings = Settings(models=[late, inline], checkpoint={"max_share": 1})
    ref: list[Worker] = []
    consumer, dlq = FakeConsumer(ref), FakeDlq()
    worker = Worker(
        settings, consumer, store, dlq, SnapshotCodec(b"k" * 32), b"h" * 32, WorkerMetrics()
    )
    ref.append(worker)
    return worker, consumer, dlq


@pytest.mark.parametrize("crash_after", [None, 2, 5], ids=["no-crash", "crash-2", "crash-5"])
def test_the_worker_joins_late_labels_exactly_once_across_a_crash(crash_after: int | None) -> None:
    from livelearn.store.checkpoints import ShardId
    from tests.unit.test_worker_loop import _run

    timeline = _timeline(500, seed=3)
    records = _records(timeline)
    # Strays after the stream: a label for no prediction, the same label twice.
    n = len(records)
    Record = type(records[0])
    strays = [
        {"id": "ghost", "ts": "2026-01-01T00:00:00Z", "label": True},
        {"id": timeline[-1][2], "ts": "2026-01-01T00:00:00Z", "label": True},
        {"id": "no-label-no-features", "ts": "2026-01-01T00:00:00Z"},
    ]
    records += [Record("t", 0, n + i, None, orjson.dumps(s)) for i, s in enumerate(strays)]
    batches = [records[i : i + 40] for i in range(0, len(records), 40)]
    store = _RecordingStore()
    worker, consumer, dlq = _late_worker(store)
    _run(worker, consumer, batches)
    if crash_after is not None:  # start again from an earlier checkpoint: a crash there
        restarted = _RecordingStore(store.history[crash_after])
        worker, consumer, dlq = _late_worker(restarted)
        _run(worker, consumer, batches)
        store = restarted
    shard = ShardId("late", "t", 0)
    learner = load_learner(SnapshotCodec(b"k" * 32), store.rows[shard].blob)
    _assert_same(learner, *_rivers_loop(timeline))
    assert learner.stats()["labels"] == {"joined": 500, "expired": 0, "pending": 0}
    assert store.rows[shard].next_offset == n + 3
    reasons = {d["source"][2]: d["reason"] for d in dlq.sent}
    assert reasons == {n: "label_unmatched", n + 1: "label_duplicate", n + 2: "missing_field"}
    # The inline model on the same topic scores the prediction events and skips the labels.
    inline = load_learner(SnapshotCodec(b"k" * 32), store.rows[ShardId("inline", "t", 0)].blob)
    assert inline.stats()["events_scored"] == 500 and inline.stats()["events_learned"] == 0


def test_a_label_joined_with_no_delay_is_kept_for_a_rollback() -> None:
    """A label whose event time equals its prediction's joins with a delay of 0.0: it is
    learned, so a rollback must replay it like any other step."""
    from livelearn.settings import Settings
    from livelearn.stream.metrics import WorkerMetrics
    from livelearn.stream.worker import Partition, Worker
    from tests.unit.test_worker_loop import FakeConsumer, FakeDlq, FakeStore, Record, _run

    late = _spec().model_dump(by_alias=True, exclude_none=True)
    late["checkpoint"] = {"every_events": 1000, "every_seconds": 3600}
    ts = 1_700_000_000_000
    values = [
        {"id": "a", "ts": ts, "features": {"x": 1.0}},
        {"id": "a", "ts": ts, "label": True},  # joined with a delay of 0.0 s
    ]
    records = [Record("t", 0, i, None, orjson.dumps(v), ts) for i, v in enumerate(values)]
    steps: list[int] = []

    def on_batch(part: Partition, batch: list[Any]) -> None:
        steps.append(len(part.shards[0].since_base))

    ref: list[Worker] = []
    consumer = FakeConsumer(ref)
    worker = Worker(
        Settings(models=[late]),
        consumer,
        FakeStore(),
        FakeDlq(),
        SnapshotCodec(b"k" * 32),
        b"h" * 32,
        WorkerMetrics(),
        on_batch=on_batch,
    )
    ref.append(worker)
    _run(worker, consumer, [records])
    assert steps == [2]  # the prediction kept, and the join
