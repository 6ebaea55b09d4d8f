"""Label-free alarms: a shift in a feature or in the predictions is flagged within two
windows, and a stationary stream raises none over 100,000 events."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from livelearn.learners import Learner, ModelSpec
from livelearn.learners.monitor import Monitor, MonitorSpec

WINDOW = 1000


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
    n: int, seed: int, change: Callable[[int, dict[str, Any]], None] | None = None
) -> Iterator[tuple[dict[str, Any], Any]]:
    rng = random.Random(seed)
    for i in range(n):
        x: dict[str, Any] = {
            "a": rng.gauss(0, 1),
            "b": rng.gauss(5, 2),
            "c": rng.choice("xyz"),
        }
        y = x["a"] + (x["b"] - 5) / 2 + rng.gauss(0, 0.5) > 0
        if change is not None:
            change(i, x)
        yield x, y


def _run(learner: Learner, events: Iterator[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    for offset, (x, y) in enumerate(events):
        learner.process(x, y, offset)
    stats: dict[str, Any] = learner.stats()["monitor"]
    return stats


def test_a_stationary_stream_raises_no_alarm_over_100000_events() -> None:
    stats = _run(Learner(_spec()), _events(100_000, seed=1))
    assert stats["windows"] == 100
    assert stats["alarms"] == dict.fromkeys(stats["alarms"], 0), stats["alarm_offsets"]
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats


SHIFT_AT = 30_500  # inside a window: detection may take until the end of the next one


def _first_alarm(stats: dict[str, Any], signal: str) -> int:
    offsets = [offset for name, offset in stats["alarm_offsets"] if name == signal]
    assert offsets, stats
    return int(offsets[0])


def test_a_shift_in_one_feature_is_flagged_naming_it_within_two_windows() -> None:
    def shift(i: int, x: dict[str, Any]) -> None:
        if i >= SHIFT_AT:
            x["b"] += 3.0  # 1.5 standard deviations

    stats = _run(Learner(_spec()), _events(40_000, seed=2, change=shift))
    first = _first_alarm(stats, "feature_shift")
    assert SHIFT_AT <= first < SHIFT_AT + 2 * WINDOW
    assert stats["shifted_feature"] in ("b", "a")  # the last window's largest shift
    assert all(o >= SHIFT_AT for _, o in stats["alarm_offsets"])


def test_a_shift_in_the_predictions_is_flagged_within_two_windows() -> None:
    def shift(i: int, x: dict[str, Any]) -> None:
        if i >= SHIFT_AT:
            x["a"] += 2.5  # the model now says True for almost every event

    stats = _run(Learner(_spec()), _events(40_000, seed=3, change=shift))
    first = _first_alarm(stats, "prediction_shift")
    assert SHIFT_AT <= first < SHIFT_AT + 2 * WINDOW


def test_new_categories_and_a_vanished_feature_are_flagged() -> None:
    def change(i: int, x: dict[str, Any]) -> None:
        if i >= SHIFT_AT:
            x["c"] = f"new-{i % 500}"
            del x["b"]

    stats = _run(Learner(_spec()), _events(40_000, seed=4, change=change))
    assert SHIFT_AT <= _first_alarm(stats, "unseen_categories") < SHIFT_AT + 2 * WINDOW
    assert SHIFT_AT <= _first_alarm(stats, "feature_set") < SHIFT_AT + 2 * WINDOW
    assert stats["unseen_categories"] >= 500 // 5 - 5


def test_null_predictions_are_flagged_and_the_monitor_can_be_turned_off() -> None:
    monitor = Monitor(MonitorSpec(window=100, warmup_windows=0), classifier=True)
    for offset in range(300):
        monitor.observe({"a": 1.0}, None if offset >= 150 else True, offset)
    stats = monitor.stats()
    assert stats["alarms"]["null_predictions"] == 2
    assert stats["signals"]["null_predictions"] == 1.0
    spec = _spec().model_copy(update={"monitor": None})
    assert "monitor" not in Learner(spec).stats()


@pytest.mark.parametrize("task", ["regression"])
def test_a_regression_models_predictions_are_watched_by_their_mean(task: str) -> None:
    def shift(i: int, x: dict[str, Any]) -> None:
        if i >= SHIFT_AT:
            x["a"] += 4.0

    learner = Learner(_spec(task))
    for offset, (x, y) in enumerate(_events(40_000, seed=5, change=shift)):
        learner.process(x, float(y) + x["a"], offset)
    stats = learner.stats()["monitor"]
    assert SHIFT_AT <= _first_alarm(stats, "prediction_shift") < SHIFT_AT + 2 * WINDOW
