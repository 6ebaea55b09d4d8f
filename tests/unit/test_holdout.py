"""A holdout: a share of labelled events scored into their own metrics, never learned."""

from __future__ import annotations

import math

from river import datasets, linear_model, metrics, optim, preprocessing

from livelearn.learners import Learner, in_holdout, spec_changes
from tests.unit.test_delayed_labels import _spec


def test_a_holdout_is_scored_never_learned_and_its_gap_is_signed() -> None:
    spec = _spec().model_copy(update={"delayed_labels": None, "holdout": 0.2})
    learner = Learner(spec)
    reference = preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(0.1))
    held_accuracy = metrics.Accuracy()
    held = 0
    for i, (x, y) in enumerate(datasets.Phishing()):
        event_id = f"e{i}"
        if in_holdout(event_id, 0.2):
            held += 1
            proba = reference.predict_proba_one(x)
            held_accuracy.update(y, max(proba, key=proba.get) if proba else None)
            learner.score_holdout(x, y, i)
        else:
            reference.learn_one(x, y)
            learner.process(x, y, i)
    stats = learner.stats()
    assert 0.15 < held / 1250 < 0.25
    assert stats["events_learned"] == 1250 - held and stats["holdout"]["events"] == held
    assert math.isclose(stats["holdout"]["metrics"]["Accuracy"], held_accuracy.get(), abs_tol=1e-12)
    gap = stats["holdout"]["gap"]
    assert math.isclose(gap["Accuracy"], stats["metrics"]["Accuracy"] - held_accuracy.get())
    # LogLoss is smaller when better: a positive gap still means "progressive looks better".
    assert math.isclose(
        gap["LogLoss"], stats["holdout"]["metrics"]["LogLoss"] - stats["metrics"]["LogLoss"]
    )
    for x, _ in list(datasets.Phishing())[:20]:
        assert learner.predict_proba_one(x) == reference.predict_proba_one(x)
    assert spec_changes(_spec().model_copy(update={"delayed_labels": None}), spec) == ["holdout"]


def test_the_worker_keeps_the_holdout_out_of_learning_and_exports_its_gap() -> None:
    import orjson

    from livelearn.learners import SnapshotCodec, load_learner
    from livelearn.settings import Settings
    from livelearn.store.checkpoints import ShardId
    from livelearn.stream.metrics import WorkerMetrics
    from livelearn.stream.worker import Worker
    from tests.unit.test_worker_loop import FakeConsumer, FakeDlq, FakeStore, Record, _run

    spec = _spec().model_dump(by_alias=True, exclude_none=True)
    spec.pop("delayed_labels")
    spec |= {"holdout": 0.25, "monitor": {"window": 100, "warmup_windows": 0}}
    ref: list[Worker] = []
    store, consumer, metrics_ = FakeStore(), FakeConsumer(ref), WorkerMetrics()
    worker = Worker(
        Settings(models=[spec]),
        consumer,
        store,
        FakeDlq(),
        SnapshotCodec(b"k" * 32),
        b"h" * 32,
        metrics_,
    )
    ref.append(worker)
    events = list(datasets.Phishing())[:600]
    records = [
        Record("t", 0, i, None, orjson.dumps({"id": f"e{i}", "features": x, "label": y}))
        for i, (x, y) in enumerate(events)
    ]
    _run(worker, consumer, [records[i : i + 50] for i in range(0, 600, 50)])
    held = sum(in_holdout(f"e{i}", 0.25) for i in range(600))
    learner = load_learner(SnapshotCodec(b"k" * 32), store.rows[ShardId("late", "t", 0)].blob)
    assert learner.stats()["events_learned"] == 600 - held
    assert learner.stats()["holdout"]["events"] == held
    sample = metrics_.registry.get_sample_value
    labels = {"model": "late", "topic": "t", "partition": "0"}
    gap = learner.stats()["holdout"]["gap"]["Accuracy"]
    assert sample("livelearn_holdout_gap_metric", labels | {"metric": "Accuracy"}) == gap
    assert (
        sample("livelearn_model_metric", labels | {"metric": "Accuracy", "window": "holdout"})
        == learner.stats()["holdout"]["metrics"]["Accuracy"]
    )
    assert (
        sample("livelearn_label_free_signal_metric", labels | {"signal": "prediction_shift"})
        is not None
    )
