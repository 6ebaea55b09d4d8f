from __future__ import annotations

import copy
import itertools
import json
import math
import pickle
import random
from collections.abc import Callable
from typing import Any

import pytest
from river import (
    datasets,
    drift,
    evaluate,
    linear_model,
    metrics,
    optim,
    preprocessing,
    tree,
    utils,
)

from livelearn.learners import Learner, ModelSpec

MakeSpec = Callable[..., ModelSpec]

LOGREG = [
    {"class": "preprocessing.StandardScaler"},
    {
        "class": "linear_model.LogisticRegression",
        "params": {"optimizer": {"class": "optim.SGD", "params": {"lr": 0.1}}},
    },
]
HOEFFDING = [{"class": "tree.HoeffdingTreeClassifier"}]
LINEAR = [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}]
PHISHING = list(datasets.Phishing())
PROBE = [x for x, _ in PHISHING[::25]]


@pytest.fixture
def make_spec() -> MakeSpec:
    """Factory: a binary logistic-regression spec with settings overridden."""

    def make(**overrides: Any) -> ModelSpec:
        data: dict[str, Any] = {
            "name": "phishing",
            "topics": ["phishing"],
            "task": "binary",
            "pipeline": LOGREG,
            "metrics": ["Accuracy", "LogLoss", "ROCAUC"],
            "rolling_window": 100,
        }
        data.update(overrides)
        return ModelSpec.from_config(data)

    return make


def _river_logreg() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(0.1)
    )


def _hand_loop(
    model: Any,
    dataset: list[tuple[dict[str, Any], Any]],
    names: list[str],
    window: int,
    classifier: bool,
) -> tuple[dict[str, float], dict[str, float], list[Any]]:
    """River's test-then-train loop, written out: predict, update metrics, learn."""
    cumulative = [getattr(metrics, name)() for name in names]
    rolling = [utils.Rolling(getattr(metrics, name), window_size=window) for name in names]
    returned = []
    for x, y in dataset:
        y_pred = model.predict_one(x)
        y_proba = model.predict_proba_one(x) if classifier else None
        for metric in (*cumulative, *rolling):
            wants_proba = classifier and not metric.requires_labels
            prediction = y_proba if wants_proba else y_pred
            if prediction is not None and prediction != {}:
                metric.update(y, prediction)
        model.learn_one(x, y)
        returned.append(y_pred)
    return (
        {name: m.get() for name, m in zip(names, cumulative, strict=True)},
        {name: m.get() for name, m in zip(names, rolling, strict=True)},
        returned,
    )


def _run(learner: Learner, dataset: list[tuple[dict[str, Any], Any]]) -> list[Any]:
    return [learner.process(x, y, offset) for offset, (x, y) in enumerate(dataset)]


@pytest.mark.parametrize(
    ("pipeline", "river_model", "names"),
    [
        (LOGREG, _river_logreg, ["Accuracy", "LogLoss", "ROCAUC"]),
        (LOGREG, _river_logreg, ["F1"]),
        (HOEFFDING, tree.HoeffdingTreeClassifier, ["Accuracy", "LogLoss", "F1"]),
    ],
    ids=["logreg-mixed-metrics", "logreg-label-metric", "hoeffding"],
)
def test_equals_a_hand_written_river_loop(
    make_spec: MakeSpec, pipeline: list[Any], river_model: Callable[[], Any], names: list[str]
) -> None:
    learner = Learner(make_spec(pipeline=pipeline, metrics=names))
    returned = _run(learner, PHISHING)
    model = river_model()
    expected, expected_rolling, expected_returned = _hand_loop(model, PHISHING, names, 100, True)

    stats = learner.stats()
    assert stats["metrics"] == pytest.approx(expected, abs=1e-12, rel=0)
    assert stats["rolling_metrics"] == pytest.approx(expected_rolling, abs=1e-12, rel=0)
    assert returned == expected_returned
    for x in PROBE:
        got, want = learner.predict_proba_one(x), model.predict_proba_one(x)
        assert got.keys() == want.keys()
        assert all(abs(got[c] - want[c]) <= 1e-12 for c in want)
        assert learner.predict_one(x) == model.predict_one(x)


@pytest.mark.parametrize(
    ("pipeline", "river_model", "names"),
    [
        (LOGREG, _river_logreg, ["Accuracy", "LogLoss", "ROCAUC"]),
        (HOEFFDING, tree.HoeffdingTreeClassifier, ["Accuracy"]),
        (HOEFFDING, tree.HoeffdingTreeClassifier, ["Accuracy", "LogLoss"]),
    ],
    ids=["logreg", "hoeffding-label-only", "hoeffding-mixed"],
)
def test_equals_progressive_val_score(
    make_spec: MakeSpec, pipeline: list[Any], river_model: Callable[[], Any], names: list[str]
) -> None:
    learner = Learner(make_spec(pipeline=pipeline, metrics=names))
    _run(learner, PHISHING)
    built = [getattr(metrics, name)() for name in names]
    metric = built[0] if len(built) == 1 else metrics.base.Metrics(built)
    evaluate.progressive_val_score(datasets.Phishing(), river_model(), metric)
    expected = {name: m.get() for name, m in zip(names, built, strict=True)}
    assert learner.stats()["metrics"] == pytest.approx(expected, abs=1e-12, rel=0)


def test_regression_equals_a_hand_written_river_loop(make_spec: MakeSpec) -> None:
    data = list(itertools.islice(datasets.TrumpApproval(), 500))
    names = ["MAE", "RMSE", "R2"]
    learner = Learner(make_spec(task="regression", pipeline=LINEAR, metrics=names))
    returned = _run(learner, data)
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    expected, expected_rolling, expected_returned = _hand_loop(model, data, names, 100, False)
    assert learner.stats()["metrics"] == pytest.approx(expected, abs=1e-12, rel=0)
    assert learner.stats()["rolling_metrics"] == pytest.approx(expected_rolling, abs=1e-12, rel=0)
    assert returned == pytest.approx(expected_returned, abs=1e-12, rel=0)


def test_first_event_of_a_fresh_tree_is_learned_but_not_scored(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(pipeline=HOEFFDING, metrics=["Accuracy", "LogLoss"]))
    x, y = PHISHING[0]
    assert learner.process(x, y, 0) is None
    stats = learner.stats()
    assert stats["metrics"] == {"Accuracy": None, "LogLoss": None}
    assert stats["rolling_metrics"] == {"Accuracy": None, "LogLoss": None}
    assert (stats["events_learned"], stats["events_scored"]) == (1, 1)
    assert learner.process(*PHISHING[1], 1) is True
    assert learner.stats()["metrics"]["Accuracy"] == 1.0


def test_unlabeled_events_are_only_scored(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec())
    _run(learner, PHISHING[:200])
    before = learner.stats()
    probe_before = [learner.predict_proba_one(x) for x in PROBE]

    predictions = [learner.process(x, None, 200 + i) for i, (x, _) in enumerate(PHISHING[200:300])]

    assert predictions == [learner.predict_one(x) for x, _ in PHISHING[200:300]]
    assert all(isinstance(p, bool) for p in predictions)
    after = learner.stats()
    assert after["events_scored"] == before["events_scored"] + 100
    assert after["events_learned"] == before["events_learned"] == 200
    assert after["metrics"] == before["metrics"]
    assert after["rolling_metrics"] == before["rolling_metrics"]
    assert [learner.predict_proba_one(x) for x in PROBE] == probe_before
    assert learner.last_offset == 299


def _abrupt_change(n: int, change_at: int, seed: int = 7) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        y = x["a"] > 0
        events.append((x, y if i < change_at else not y))
    return events


def test_drift_offsets_are_recorded_on_an_abrupt_change(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(metrics=["Accuracy"]))
    offsets = range(10_000, 13_000)
    events = _abrupt_change(3000, change_at=1500)
    for offset, (x, y) in zip(offsets, events, strict=True):
        learner.process(x, y, offset)
    stats = learner.stats()
    assert stats["drift_detections"] >= 1
    assert stats["drift_detections"] == len(stats["drift_offsets"])
    first = stats["drift_offsets"][0]
    assert 11_500 < first < 11_700, stats["drift_offsets"]


def test_a_model_that_improves_is_no_drift(make_spec: MakeSpec) -> None:
    """Drift counts only when the error rises (one-sided): ADWIN also cuts its window when
    the error falls, as here where the labels turn from coin flips to a learnable rule;
    those cuts are not counted, and ADWIN's own detections are kept beside for contrast."""
    rng = random.Random(4)
    learner = Learner(make_spec(metrics=["Accuracy"]))
    adwin_detections = 0
    for offset in range(6000):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        y = x["a"] > 0 if offset >= 3000 else rng.random() < 0.5
        learner.process(x, y, offset)
        adwin_detections += learner._detector.drift_detected
    assert adwin_detections >= 1
    assert learner.stats()["drift_detections"] == 0
    restored = pickle.loads(pickle.dumps(learner))
    assert restored._drift_errors == learner._drift_errors
    state = dict(learner.__dict__)
    del state["_drift_errors"]  # a checkpoint from before: ADWIN's window is read back
    older = Learner.__new__(Learner)
    older.__setstate__(state)
    assert older._drift_errors == [learner._detector.width, learner._detector.total, 0.0]


def test_a_passing_burst_of_errors_is_no_drift_and_a_lasting_rise_is(make_spec: MakeSpec) -> None:
    """ADWIN catches a burst of 40 wrong labels as a rise; the events after it do not
    confirm it, so it is not counted. A rise of the label noise that lasts is counted, at
    the offset where ADWIN detected it."""
    for lasting in (False, True):
        rng = random.Random(1)
        learner = Learner(make_spec(metrics=["Accuracy"]))
        adwin_detections = 0
        for offset in range(6000):
            x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
            noise = 0.35 if lasting and offset >= 3000 else 0.1
            wrong = rng.random() < noise or (not lasting and 3000 <= offset < 3040)
            learner.process(x, (x["a"] > 0) != wrong, offset)
            adwin_detections += learner._detector.drift_detected
        assert adwin_detections >= 1
        stats = learner.stats()
        if lasting:
            assert stats["drift_detections"] >= 1
            assert 3000 < stats["drift_offsets"][0] < 3400, stats["drift_offsets"]
        else:
            assert stats["drift_detections"] == 0, stats["drift_offsets"]


def test_regression_drift_is_watched_on_absolute_errors(make_spec: MakeSpec) -> None:
    rng = random.Random(3)
    learner = Learner(
        make_spec(
            task="regression",
            pipeline=LINEAR,
            metrics=["MAE"],
            drift={"class": "drift.PageHinkley", "params": {"mode": "up"}},
        )
    )
    for i in range(2000):
        x = {"a": rng.uniform(0, 1)}
        learner.process(x, 3 * x["a"] + (0 if i < 1000 else 50), i)
    assert 1000 <= learner.stats()["drift_offsets"][0] < 1010


def test_only_the_last_100_drift_offsets_are_kept(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(drift={"class": "drift.DummyDriftDetector", "params": {"t_0": 5}}))
    _run(learner, PHISHING[:1000])  # a logistic regression predicts from the first event
    stats = learner.stats()
    assert stats["drift_detections"] == 200
    assert stats["drift_offsets"] == list(range(504, 1000, 5))


def test_no_drift_detector(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(drift=None))
    _run(learner, PHISHING[:100])
    assert learner.stats()["drift_detections"] == 0


@pytest.mark.parametrize(
    ("task", "pipeline", "dataset"),
    [
        ("binary", LOGREG, PHISHING[:300]),
        ("binary", HOEFFDING, PHISHING[:300]),
        ("multiclass", HOEFFDING, list(itertools.islice(datasets.ImageSegments(), 300))),
        ("regression", LINEAR, list(itertools.islice(datasets.TrumpApproval(), 300))),
    ],
    ids=["binary-logreg", "binary-tree", "multiclass", "regression"],
)
def test_stats_are_json_serialisable(
    make_spec: MakeSpec, task: str, pipeline: list[Any], dataset: list[Any]
) -> None:
    learner = Learner(make_spec(task=task, pipeline=pipeline, metrics=None))
    assert json.loads(json.dumps(learner.stats(), allow_nan=False))["task"] == task
    _run(learner, dataset)
    stats = learner.stats()
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats
    assert set(stats) == {
        "events_learned",
        "events_scored",
        "metrics",
        "rolling_metrics",
        "drift_detections",
        "drift_offsets",
        "task",
        "monitor",
    }
    for value in (*stats["metrics"].values(), *stats["rolling_metrics"].values()):
        assert type(value) is float
        assert math.isfinite(value)
    assert list(stats["metrics"]) == learner.spec.metrics


def test_feature_selection_applies_to_learning_and_serving(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(exclude=["https", "ip_in_url"]))
    _run(learner, PHISHING[:300])
    weights = learner.model["LogisticRegression"].weights
    assert "https" not in weights
    assert "ip_in_url" not in weights
    assert "popup_window" in weights

    model = _river_logreg()
    for x, y in PHISHING[:300]:
        model.learn_one({k: v for k, v in x.items() if k not in ("https", "ip_in_url")}, y)
    for x in PROBE:
        assert learner.predict_proba_one(x) == model.predict_proba_one(
            {k: v for k, v in x.items() if k not in ("https", "ip_in_url")}
        )


def test_include_keeps_only_named_features(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(include=["https", "long_url"]))
    _run(learner, PHISHING[:100])
    assert set(learner.model["StandardScaler"].means) == {"https", "long_url"}


def test_process_leaves_its_input_unchanged(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(exclude=["https"]))
    for offset, (x, y) in enumerate(PHISHING[:50]):
        before = copy.deepcopy(x)
        learner.process(x, y, offset)
        assert x == before


def test_deepcopy_is_independent(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec())
    _run(learner, PHISHING[:200])
    clone = copy.deepcopy(learner)
    probe_before = [learner.predict_proba_one(x) for x in PROBE]
    for offset, (x, y) in enumerate(PHISHING[200:400], start=200):
        clone.process(x, y, offset)
    assert [learner.predict_proba_one(x) for x in PROBE] == probe_before
    assert learner.events_learned == 200
    assert clone.events_learned == 400


def test_pickle_keeps_state_and_keeps_learning_identically(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec())
    _run(learner, PHISHING[:200])
    restored = pickle.loads(pickle.dumps(learner))
    assert restored.stats() == learner.stats()
    rest = PHISHING[200:400]
    assert [restored.process(x, y, i) for i, (x, y) in enumerate(rest)] == [
        learner.process(x, y, i) for i, (x, y) in enumerate(rest)
    ]
    assert restored.stats() == learner.stats()


def test_predict_proba_one_refuses_a_regression(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec(task="regression", pipeline=LINEAR, metrics=["MAE"]))
    with pytest.raises(TypeError, match="regression"):
        learner.predict_proba_one({"a": 1.0})


def test_model_is_the_river_pipeline(make_spec: MakeSpec) -> None:
    learner = Learner(make_spec())
    assert isinstance(learner.model["LogisticRegression"], linear_model.LogisticRegression)
    assert learner.last_offset is None
    assert isinstance(Learner(make_spec(drift=None)).spec.build_drift(), type(None))
    assert isinstance(Learner(make_spec()).spec.build_drift(), drift.ADWIN)


def test_rolling_metrics_are_brought_up_to_date_by_what_changed(make_spec: MakeSpec) -> None:
    """Reads at any interval give the metrics of the last ``rolling_window`` inputs, as a
    fresh replay does; between reads at most a window apart the same metrics are updated and
    reverted, not rebuilt (further apart, rebuilding costs less than what changed)."""
    names = ["Accuracy", "LogLoss", "ROCAUC", "F1"]
    learner = Learner(make_spec(pipeline=LOGREG, metrics=names, rolling_window=50))
    model = _river_logreg()
    inputs: list[tuple[Any, Any, Any]] = []  # (label, predicted label, probabilities)
    reads = iter([3, 10, 49, 50, 51, 130, 1, 99, 0, 250, 20])
    offset, rolled = 0, None
    for gap in reads:
        for x, y in PHISHING[offset : offset + gap]:
            proba = model.predict_proba_one(x)
            y_pred = max(proba, key=proba.get) if proba else None
            if y_pred is not None:
                inputs.append((y, y_pred, proba))
            model.learn_one(x, y)
            learner.process(x, y, offset)
            offset += 1
        fresh = [getattr(metrics, name)() for name in names]
        for y, y_pred, proba in inputs[-50:]:
            for metric in fresh:
                metric.update(y, proba if not metric.requires_labels else y_pred)
        got = learner.stats()["rolling_metrics"]
        assert got == pytest.approx(
            {n: m.get() for n, m in zip(names, fresh, strict=True)}, abs=1e-12, rel=0
        )
        if rolled is not None and gap <= 50:
            assert learner._rolled is rolled, f"rebuilt after {gap} events"
        rolled = learner._rolled
