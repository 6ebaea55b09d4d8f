"""The accuracy estimated from a classifier's confidence before its delayed labels come
(learners/estimate.py), against the accuracy its labels realise for the same windows."""

from __future__ import annotations

import collections
import itertools
import pickle
import random
import statistics
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from river import datasets
from river.datasets import synth

from livelearn.learners import Learner, ModelSpec

PIPELINES = {
    "linear": [
        {"class": "preprocessing.StandardScaler"},
        {"class": "linear_model.LogisticRegression"},
    ],
    "tree": [{"class": "tree.HoeffdingTreeClassifier"}],
    # Over-confident on these streams: its raw confidence is off the realised accuracy by
    # several points, which the calibration takes back.
    "naive_bayes": [{"class": "naive_bayes.GaussianNB"}],
}


def _spec(model: str, window: int = 1000, **delayed: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": f"estimate-{model}",
            "topics": ["t"],
            "task": "binary",
            "pipeline": PIPELINES[model],
            "metrics": ["Accuracy"],
            "monitor": {"window": window},
            "delayed_labels": {"max_pending": 100_000, "max_age_s": 1e9, **delayed},
        }
    )


def _phishing(n: int) -> Iterator[tuple[dict[str, Any], Any]]:
    return itertools.islice(itertools.cycle(list(datasets.Phishing())), n)


def _agrawal(n: int, function: int = 0, seed: int = 42) -> Iterator[tuple[dict[str, Any], Any]]:
    return itertools.islice(synth.Agrawal(classification_function=function, seed=seed), n)


def _feed(learner: Learner, stream: Iterable[tuple[dict[str, Any], Any]], delay: int) -> None:
    """Predict each event, and join each label ``delay`` predictions later (the rest at the
    end): offsets and event times are the event's rank."""
    waiting: collections.deque[tuple[str, Any]] = collections.deque()
    i = 0
    for i, (x, y) in enumerate(stream):
        learner.predict_pending(f"e{i}", x, i, i)
        waiting.append((f"e{i}", y))
        if len(waiting) > delay:
            event_id, label = waiting.popleft()
            learner.join(event_id, label, i, i)
    for event_id, label in waiting:
        learner.join(event_id, label, i, i)


def _windows(learner: Learner) -> list[dict[str, Any]]:
    """The labelled windows in order (all kept: the streams here are short enough)."""
    assert learner._estimate is not None
    return list(learner._estimate._labelled)


# 8 windows of 5,000 predictions (40,000 events) per case, labels 500 predictions late.
# Windows this long keep the realised figure's own sampling error (a binomial's, under a
# point at 5,000) well inside the two points.
@pytest.mark.parametrize(
    ("stream", "model"),
    [
        ("phishing", "linear"),
        ("phishing", "tree"),
        ("phishing", "naive_bayes"),
        ("agrawal", "linear"),
        ("agrawal", "tree"),
    ],
    ids=lambda v: str(v),
)
def test_on_stationary_data_the_estimate_stays_within_two_points_of_the_realised(
    stream: str, model: str
) -> None:
    learner = Learner(_spec(model, window=5000))
    _feed(learner, _phishing(40_000) if stream == "phishing" else _agrawal(40_000), 500)
    windows = _windows(learner)
    assert len(windows) == 8
    # Every prediction scored (a fresh tree predicts no class until its first label).
    assert all(w["labels"] == 5000 for w in windows[1:])
    gaps = [w["estimated"] - w["realised"] for w in windows]
    assert max(abs(g) for g in gaps) <= 0.02, gaps
    assert abs(statistics.mean(gaps)) <= 0.01, gaps
    if model == "naive_bayes":  # what the calibration is for: its raw confidence is off
        raw = [w["confidence"] - w["realised"] for w in windows[1:]]
        assert abs(statistics.mean(raw)) > 0.03, raw


@pytest.mark.parametrize("model", ["linear", "tree"])
def test_a_concept_switch_moves_the_estimate_within_one_window(model: str) -> None:
    """Agrawal's function 0, then function 2 from the first event of window 10; labels
    come 200 predictions late, so the model and the calibration learn from the new
    concept inside that window, and the estimate of window 10 already shows it."""
    learner = Learner(_spec(model))
    stream = itertools.chain(_agrawal(10_000, 0, seed=42), _agrawal(3000, 2, seed=43))
    _feed(learner, stream, 200)
    by_index = {w["index"]: w for w in _windows(learner)}
    before = [by_index[i]["estimated"] for i in range(6, 10)]
    assert max(before) - min(before) < 0.02  # steady before the switch
    assert by_index[10]["first_offset"] == 10_000
    moved = statistics.mean(before) - by_index[10]["estimated"]
    assert moved > 0.03, (before, by_index[10])
    assert by_index[10]["realised"] < statistics.mean(r["realised"] for r in by_index.values())


def _boundary_stream(n: int, shift_at: int, seed: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """Two features, the label their sum's sign (with a little noise); from ``shift_at``
    the inputs crowd the decision boundary, where the model is unsure and often wrong."""
    rng = random.Random(seed)
    for i in range(n):
        spread = 1.0 if i < shift_at else 0.15
        a, b = rng.gauss(0, spread), rng.gauss(0, spread)
        yield {"a": a, "b": b}, a + b + rng.gauss(0, 0.1) > 0


def test_inputs_moving_to_the_uncertain_region_move_the_estimate_before_any_label() -> None:
    """No label of the shifted inputs ever comes (they all expire, in event time): the
    drop shows in the estimate of the first window after the shift, from the confidence
    alone, and the realised accuracy of the labelled windows before it stays put."""
    learner = Learner(_spec("linear", max_age_s=5000))
    labels: collections.deque[tuple[str, bool]] = collections.deque()
    for i, (x, y) in enumerate(_boundary_stream(12_000, 8000, seed=3)):
        learner.predict_pending(f"e{i}", x, i, i)
        if i < 8000:
            labels.append((f"e{i}", y))
        if len(labels) > 100 or (i >= 8000 and labels):
            event_id, label = labels.popleft()
            learner.join(event_id, label, i, i)
    assert learner._estimate is not None
    latest = learner._estimate.latest
    assert latest is not None and latest["index"] == 11
    stats = learner.stats()["estimate"]
    history = {row[0]: row for row in stats["history"]}
    steady = [history[i][2] for i in range(4, 8)]
    assert all(abs(history[i][2] - history[i][3]) <= 0.02 for i in range(4, 8))
    # Window 8, the first after the shift: its labels never came.
    assert learner._estimate._closed[8]["estimated"] < min(steady) - 0.05
    assert stats["unlabelled_windows"] == 4


def test_a_restored_learner_gives_the_same_figures_as_one_never_stopped() -> None:
    whole = Learner(_spec("linear"))
    events = list(_phishing(5000))
    _feed(whole, events, 300)
    first = Learner(_spec("linear"))
    waiting: collections.deque[tuple[str, Any]] = collections.deque()
    for i, (x, y) in enumerate(events):
        if i == 2345:  # a checkpoint and a restore mid-window, with labels pending
            first = pickle.loads(pickle.dumps(first))
        first.predict_pending(f"e{i}", x, i, i)
        waiting.append((f"e{i}", y))
        if len(waiting) > 300:
            event_id, label = waiting.popleft()
            first.join(event_id, label, i, i)
    for event_id, label in waiting:
        first.join(event_id, label, len(events) - 1, len(events) - 1)
    assert first.stats()["estimate"] == whole.stats()["estimate"]
    assert whole.stats()["estimate"]["labelled"]["index"] == 4


def test_expired_predictions_settle_their_window_and_are_left_out_of_the_realised() -> None:
    learner = Learner(_spec("linear", window=100, max_pending=150))
    events = list(_phishing(400))
    for i, (x, _) in enumerate(events):
        learner.predict_pending(f"e{i}", x, i, i)
    # 250 expired by count: windows 0 and 1 are labelled with no label, 2 awaits its own.
    stats = learner.stats()["estimate"]
    assert learner.label_counts["expired"] == 250
    assert [row[0] for row in stats["history"]] == [0, 1]
    assert stats["labelled"]["realised"] is None and stats["labelled"]["labels"] == 0
    for i in range(250, 300):
        learner.join(f"e{i}", events[i][1], 400 + i, 400 + i)
    stats = learner.stats()["estimate"]
    assert stats["labelled"]["index"] == 2 and stats["labelled"]["labels"] == 50
    assert stats["unlabelled_windows"] == 1  # window 3; window 4 is open


def test_events_with_their_label_count_in_the_windows_and_a_regression_has_no_estimate() -> None:
    learner = Learner(_spec("linear", window=100))
    for i, (x, y) in enumerate(_phishing(250)):
        learner.process(x, y, i, i)
    stats = learner.stats()["estimate"]
    assert stats["windows"] == 2 and stats["labelled"]["labels"] == 100
    without = _spec("linear").model_copy(update={"delayed_labels": None})
    assert "estimate" not in Learner(without).stats()


def test_a_learner_checkpointed_before_the_estimate_gets_one_and_learns_its_old_predictions() -> (
    None
):
    older = Learner(_spec("linear", window=100))
    events = list(_phishing(300))
    for i, (x, _) in enumerate(events[:150]):
        older.predict_pending(f"e{i}", x, i, i)
    # As such a learner was pickled: no estimate, predictions kept without a window.
    del older.__dict__["_estimate"]
    older._pending = {k: v[:4] for k, v in older._pending.items()}
    restored = pickle.loads(pickle.dumps(older))
    assert restored._estimate is not None and restored._estimate.windows == 0
    for i in range(150):
        restored.join(f"e{i}", events[i][1], 150 + i, 150 + i)
    # Learned, in no window; they would calibrate with the probabilities a metric kept,
    # and here no metric scores probabilities.
    calibrated = restored.stats()["estimate"]
    assert calibrated["labelled"] is None and calibrated["calibration_labels"] == 0
    assert restored.events_learned == 150
    for i, (x, y) in enumerate(events[150:], start=150):
        restored.predict_pending(f"e{i}", x, 150 + i, 150 + i)
        restored.join(f"e{i}", y, 150 + i, 150 + i)
    stats = restored.stats()["estimate"]
    assert stats["windows"] == 1 and stats["labelled"]["labels"] == 100
