"""Label-free alarms: complete (each kind of change is caught within two windows wherever in
a window it starts), calibrated (stationary streams raise none), and explained (each alarm
names its signal, feature or class, window, value and threshold)."""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from livelearn.learners import Learner, ModelSpec
from livelearn.learners.monitor import SIGNALS, Monitor, MonitorSpec
from livelearn.learners.sanitize import Sanitizer
from livelearn.store.checkpoints import ShardId
from livelearn.stream._reporting import Reporting
from livelearn.stream._shard import Shard
from livelearn.stream.metrics import WorkerMetrics

WINDOW = 1000
SPEC = MonitorSpec(window=WINDOW)
CHANGE_WINDOW = SPEC.warmup_windows + 2  # the window each change starts in
TENTHS = [i / 10 for i in range(10)]
Change = Callable[[random.Random, dict[str, Any], Any], Any]


def _spec(task: str = "binary") -> ModelSpec:
    pipeline = [
        {"class": "preprocessing.StandardScaler"},
        {"class": "linear_model.LogisticRegression"}
        if task == "binary"
        else {"class": "linear_model.LinearRegression"},
    ]
    return ModelSpec.model_validate(
        {
            "name": "watched",
            "topics": ["t"],
            "task": task,
            "pipeline": pipeline,
            "exclude": ["c"],  # watched by the monitor, not learned
            "monitor": {"window": WINDOW},
        }
    )


def _events(
    n: int, seed: int, change_at: int | None = None, change: Change | None = None
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Features a ~ N(0, 1), b ~ N(5, 2), c in x/y/z (shares 0.5/0.3/0.2), and a
    prediction True with probability 0.4; from ``change_at`` on, ``change`` edits the
    features in place and returns the prediction."""
    rng = random.Random(seed)
    for i in range(n):
        x: dict[str, Any] = {
            "a": rng.gauss(0, 1),
            "b": rng.gauss(5, 2),
            "c": rng.choices("xyz", (0.5, 0.3, 0.2))[0],
        }
        y_pred: Any = rng.random() < 0.4
        if change is not None and change_at is not None and i >= change_at:
            y_pred = change(rng, x, y_pred)
        yield x, y_pred


def _vanish(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    del x["a"]
    return y


def _appear(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    x["e"] = rng.random()
    return y


def _new_category(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    if rng.random() < 0.1:  # one new value takes a tenth of the events
        x["c"] = "unknown"
    return y


def _known_categories(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    x["c"] = rng.choices("xyz", (0.2, 0.3, 0.5))[0]
    return y


def _mean(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    x["b"] += 2.0  # one standard deviation
    return y


def _spread(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    x["b"] = 5 + (x["b"] - 5) * math.sqrt(2)  # variance doubled, mean kept
    return y


def _nulls(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    return None if rng.random() < 0.05 else y


def _nans(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    return float("nan") if rng.random() < 0.05 else y


def _collapse(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    return True


def _class_shares(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
    return rng.random() < 0.55


# change, the signal that must flag it, and the feature (or None) and class or category
# (or None) it must name.
CHANGES: list[tuple[Change, str, str | None, str | None]] = [
    (_vanish, "feature_set", "a", None),
    (_appear, "feature_set", "e", None),
    (_new_category, "category_shift", "c", "unknown"),
    (_known_categories, "category_shift", "c", None),
    (_mean, "feature_shift", "b", None),
    (_spread, "feature_spread", "b", None),
    (_nulls, "null_predictions", None, None),
    (_nans, "null_predictions", None, None),
    (_collapse, "prediction_collapse", None, "True"),
    (_class_shares, "prediction_shift", None, None),
]
IDS = [
    "vanish",
    "appear",
    "new_category",
    "known_categories",
    "mean",
    "spread",
    "nulls",
    "nans",
    "collapse",
    "class_shares",
]


def _feed(monitor: Monitor, events: Iterator[tuple[dict[str, Any], Any]]) -> None:
    for offset, (x, y_pred) in enumerate(events):
        monitor.observe(x, y_pred, offset, 1_700_000_000_000 + offset)


@pytest.mark.parametrize(("change", "signal", "feature", "category"), CHANGES, ids=IDS)
def test_each_change_is_flagged_within_two_windows_wherever_it_starts(
    change: Change, signal: str, feature: str | None, category: str | None
) -> None:
    for seed, tenth in enumerate(TENTHS):
        change_at = int((CHANGE_WINDOW + tenth) * WINDOW)
        deadline = (CHANGE_WINDOW + 2) * WINDOW  # the end of the next window
        monitor = Monitor(SPEC, classifier=True)
        _feed(monitor, _events(deadline, seed, change_at, change))
        log = monitor.stats()["alarm_log"]
        assert all(a["last_offset"] >= change_at for a in log), (tenth, log)
        mine = [a for a in log if a["signal"] == signal]
        assert mine, (tenth, monitor.stats())
        first = mine[0]
        assert first["feature"] == feature, (tenth, first)
        if category is not None:
            assert first["category"] == category, (tenth, first)
        assert first["value"] > first["threshold"] > 0
        assert first["last_offset"] - first["first_offset"] == WINDOW - 1
        assert first["last_event_ms"] - first["first_event_ms"] == WINDOW - 1


def test_the_thresholds_come_from_the_false_alarm_budget() -> None:
    """A larger budget of events between false alarms raises every threshold."""
    strict = Monitor(MonitorSpec(window=WINDOW, expected_events_between_false_alarms=1e9), True)
    loose = Monitor(MonitorSpec(window=WINDOW, expected_events_between_false_alarms=1e5), True)
    for monitor in (strict, loose):
        _feed(monitor, _events(15 * WINDOW, seed=11))
    for signal in ("feature_shift", "prediction_shift", "null_predictions"):
        assert strict.stats()["thresholds"][signal] > loose.stats()["thresholds"][signal]
    with pytest.raises(ValidationError, match="at least 10 windows"):
        MonitorSpec(window=1000, expected_events_between_false_alarms=5000)


def test_a_stream_that_moves_between_windows_widens_its_thresholds() -> None:
    """Calibrated on the warm-up: a feature whose mean wanders from window to window (as
    real streams do) gets a wider threshold than an independent one, and raises nothing."""

    def wander(rng: random.Random, x: dict[str, Any], y: Any) -> Any:
        return y

    monitor = Monitor(SPEC, classifier=True)
    rng = random.Random(5)
    level = 0.0
    for offset, (x, y) in enumerate(_events(60 * WINDOW, seed=5)):
        if offset % WINDOW == 0:
            level = rng.gauss(0, 0.5)  # a new level each window, the same law throughout
        x["a"] += level
        monitor.observe(x, y, offset)
    assert monitor.threshold("feature_shift", "a=", 30) > 2 * monitor.threshold(
        "feature_shift", "b=", 30
    )
    assert monitor.stats()["alarms"]["feature_shift"] == 0


def test_a_stationary_stream_raises_no_alarm_over_100000_events() -> None:
    learner = Learner(_spec())
    for offset, (x, _) in enumerate(_events(100_000, seed=1)):
        y = x["a"] + (x["b"] - 5) / 2 > 0
        learner.process(x, y, offset, offset)
    stats = learner.stats()["monitor"]
    assert stats["windows"] == 100
    assert stats["calibrated"]
    assert stats["alarms"] == dict.fromkeys(SIGNALS, 0), stats["alarm_log"]
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats


def test_a_restored_monitor_computes_the_same_signals() -> None:
    """Checkpointed mid-window, a restored monitor goes on exactly as the original."""
    events = list(_events(20_500, seed=8, change_at=16_300, change=_mean))
    original = Monitor(SPEC, classifier=True)
    _feed(original, iter(events[:14_321]))
    restored = pickle.loads(pickle.dumps(original))
    for monitor in (original, restored):
        for offset, (x, y) in enumerate(events[14_321:], start=14_321):
            monitor.observe(x, y, offset, offset)
    assert restored.stats() == original.stats()
    assert original.stats()["alarms"]["feature_shift"] >= 1


def test_a_checkpoint_of_an_older_monitor_warms_up_afresh() -> None:
    monitor = Monitor(SPEC, classifier=True)
    _feed(monitor, _events(3 * WINDOW, seed=9))
    state = dict(monitor.__dict__)
    state.pop("_version")
    old = Monitor.__new__(Monitor)
    old.__setstate__(state)
    assert old.windows == 0
    _feed(old, _events(2 * WINDOW, seed=9))
    assert old.windows == 2


@pytest.mark.parametrize("task", ["regression"])
def test_a_regression_models_predictions_are_watched_by_their_mean(task: str) -> None:
    shift_at = 15_500

    learner = Learner(_spec(task))
    for offset, (x, _) in enumerate(_events(18_000, seed=5)):
        if offset >= shift_at:
            x["a"] += 4.0
        learner.process(x, x["a"] + (x["b"] - 5) / 2, offset)
    log = learner.stats()["monitor"]["alarm_log"]
    first = next(a for a in log if a["signal"] == "prediction_shift")
    assert shift_at <= first["last_offset"] < 17_000
    assert first["category"] == "mean"


def test_the_monitor_can_be_turned_off() -> None:
    spec = _spec().model_copy(update={"monitor": None})
    assert "monitor" not in Learner(spec).stats()


def test_the_worker_logs_and_exports_each_alarm_from_the_alarm_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log line and the alarm series name the alarm's own feature and window, even
    when later windows (read at checkpoint time) point elsewhere."""
    spec = _spec()
    learner = Learner(spec)
    shard = Shard(ShardId("watched", "t", 0), spec, learner, Sanitizer([], key=b"k"), 1, 0)
    reporting = Reporting.__new__(Reporting)
    reporting._metrics = WorkerMetrics(CollectorRegistry())
    events = _events(16_000, seed=3, change_at=12_400, change=_vanish)
    for offset, (x, _) in enumerate(events):
        learner.process(x, x["b"] > 5, offset, 1_700_000_000_000 + offset)
    labels = ("watched", "t", "0")
    with caplog.at_level(logging.WARNING, logger="livelearn.worker"):
        reporting._report_monitor(shard, learner.stats()["monitor"], labels)
    alarms = [r for r in caplog.records if r.getMessage().startswith("label-free alarm")]
    assert alarms
    fields = alarms[0].fields  # type: ignore[attr-defined]
    assert (fields["signal"], fields["feature"]) == ("feature_set", "a")
    assert 12_400 <= fields["last_offset"] < 14_000
    assert fields["last_event_time"].startswith("2023-11-14T22:")
    assert fields["value"] > fields["threshold"]
    registry = reporting._metrics.registry
    where = {"model": "watched", "topic": "t", "partition": "0", "signal": "feature_set"}
    assert registry.get_sample_value(
        "livelearn_label_free_alarm_timestamp_seconds", {**where, "feature": "a"}
    )
    assert registry.get_sample_value("livelearn_label_free_threshold_metric", where)
    assert registry.get_sample_value(
        "livelearn_label_free_alarms_total", {"model": "watched", "signal": "feature_set"}
    ) == len([a for a in learner.stats()["monitor"]["alarm_log"] if a["signal"] == "feature_set"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="livelearn.worker"):
        reporting._report_monitor(shard, learner.stats()["monitor"], labels)
    assert not caplog.records  # each alarm is logged once
