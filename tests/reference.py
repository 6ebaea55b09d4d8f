"""River's own loop over a stream's valid events: the reference a worker's shard must equal.

Shared by tests/unit/test_worker_properties.py and tests/integration/test_hostile_stream.py.
What counts as valid comes from the README, not from the worker: a label must fit the task
(`label_fits`), and an event River's own loop raises on is skipped as if never seen (the
``dead_letter`` processing-error policy: it is dead-lettered as ``model_error``).

>>> from learners import ModelSpec
>>> spec = ModelSpec.model_validate({"name": "m", "topics": ["t"], "task": "binary",
...     "pipeline": [{"class": "preprocessing.StandardScaler"},
...                  {"class": "linear_model.LogisticRegression"}]})
>>> stream = [{"features": {"x": 1.0}, "label": True}, {"features": {"x": "a"}, "label": False},
...           {"features": {"x": 2.0}, "label": 0.5}, {"features": {"x": 3.0}, "label": None}]
>>> want = rivers_loop(spec, enumerate(stream))
>>> want.scored, want.learned, want.raised, want.bad_label
(2, 1, {1}, {2})
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from river import metrics as river_metrics
from river import utils

from livelearn.learners import ModelSpec


def label_fits(task: str, label: Any) -> bool:
    """The event contract: binary takes a bool or the integer 0/1, multiclass a string, an
    integer or a bool, regression a finite number that is not a bool.

    >>> label_fits("binary", 1), label_fits("binary", 1.0), label_fits("regression", 10**400)
    (True, False, False)
    """
    kind = type(label)
    if task == "binary":
        return kind is bool or (kind is int and label in (0, 1))
    if task == "multiclass":
        return kind in (str, int, bool)
    try:
        return kind in (int, float) and math.isfinite(label)
    except OverflowError:  # an integer no double can hold
        return False


def metric_value(value: Any) -> float | None:
    """A metric's value as the worker reports it: None unless a finite number."""
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass
class Expected:
    """What one shard should end with: River's model and metrics, the counts, and the
    offsets it should dead-letter (a label that does not fit; River raised)."""

    model: Any
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    scored: int = 0
    learned: int = 0
    bad_label: set[int] = field(default_factory=set)
    raised: set[int] = field(default_factory=set)
    # How far River's Rolling may drift: it reverts each update that leaves the window,
    # and every revert can round off about an ulp of the largest term the window held
    # (a 2**62 label's error, say). The worker recomputes the window instead.
    rolling_drift: float = 0.0


class _Raised(Exception):
    def __init__(self, offset: int) -> None:
        self.offset = offset


def rivers_loop(
    spec: ModelSpec,
    events: Iterable[tuple[int, dict[str, Any] | None]],
    drop: frozenset[str] = frozenset(),
) -> Expected:
    """River's loop over ``events`` (offset, decoded event or None for one the decoder
    refuses): predict (proba), update the metrics as ``progressive_val_score`` does,
    ``learn_one``; metrics also over the last ``spec.rolling_window`` updates. Features in
    ``drop`` are removed first (the spec's sanitize rules). An event River raises on is
    left out: the loop starts again without it (cheaper than copying the model before
    every event, as raising events are few)."""
    stream = list(events)
    raised: set[int] = set()
    while True:
        try:
            return _loop(spec, stream, drop, raised)
        except _Raised as exc:
            raised.add(exc.offset)


def _loop(
    spec: ModelSpec,
    events: list[tuple[int, dict[str, Any] | None]],
    drop: frozenset[str],
    raised: set[int],
) -> Expected:
    model = spec.build_pipeline()
    classifier = spec.task != "regression"
    cumulative = [getattr(river_metrics, name)() for name in spec.metrics]
    rolling = [
        utils.Rolling(getattr(river_metrics, name), window_size=spec.rolling_window)
        for name in spec.metrics
    ]
    evaluated = False
    out = Expected(model, raised=set(raised))
    largest = 0.0  # the largest rolling value seen, times the window: its largest term
    for offset, event in events:
        if event is None or offset in raised:
            continue
        x = {k: v for k, v in event["features"].items() if k not in drop}
        y = event["label"]
        if y is not None and not label_fits(spec.task, y):
            out.bad_label.add(offset)
            continue
        try:
            if y is None:
                model.predict_one(x)
                out.scored += 1
                continue
            proba = model.predict_proba_one(x) if classifier else None
            y_pred = model.predict_one(x)
            for metric in cumulative + rolling:
                wants_proba = classifier and not metric.requires_labels
                pred = proba if wants_proba else y_pred
                if pred is not None and pred != {}:
                    metric.update(y, pred)
                    evaluated = True
            model.learn_one(x, y)
        except Exception:  # a string feature in the scaler, RMSE overflowing on 1e300, ...
            raise _Raised(offset) from None
        for name, metric in zip(spec.metrics, rolling, strict=True):
            with contextlib.suppress(ArithmeticError, ValueError):
                value = _running_mean(name, metric_value(metric.get()))
                if value is not None and math.isfinite(value):
                    largest = max(largest, abs(value) * spec.rolling_window)
        out.scored += 1
        out.learned += 1
    out.rolling_drift = out.learned * largest * 2.0**-52
    out.values = {
        key: {
            name: metric_value(m.get()) if evaluated else None
            for name, m in zip(spec.metrics, ms, strict=True)
        }
        for key, ms in (("metrics", cumulative), ("rolling_metrics", rolling))
    }
    return out


def _running_mean(name: str, value: float | None) -> float | None:
    """The mean River's metric keeps (and reverts) behind ``value``: the square of a root
    mean square."""
    if value is None or name not in ("RMSE", "RMSLE"):
        return value
    return value * value


def close(a: Any, b: Any, tol: float) -> bool:
    """Equal within ``tol``; None only to None, NaN only to NaN."""
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def assert_same_predictions(task: str, got: Any, want: Any, probes: list[dict[str, Any]]) -> None:
    """Two River models give the same predictions (probabilities) on ``probes``."""
    for x in probes:
        if task == "regression":
            p, q = got.predict_one(x), want.predict_one(x)
            assert close(p, q, 1e-12), (x, p, q)
        else:
            p, q = got.predict_proba_one(x), want.predict_proba_one(x)
            assert p.keys() == q.keys(), (x, p, q)
            assert all(close(p[k], q[k], 1e-12) for k in p), (x, p, q)


def assert_learned_as_river(
    stats: dict[str, Any], model: Any, want: Expected, task: str, probes: list[dict[str, Any]]
) -> None:
    """A shard's stats and model equal River's loop: counts, predictions on ``probes``,
    cumulative metrics (exactly, up to 1e-12) and rolling ones (up to 1e-9, or River's
    drift: its Rolling reverts updates where the worker recomputes the window)."""
    assert (stats["events_scored"], stats["events_learned"]) == (want.scored, want.learned)
    assert_same_predictions(task, model, want.model, probes)
    for key, tol in (("metrics", 1e-12), ("rolling_metrics", 1e-9)):
        for name, value in want.values[key].items():
            got = stats[key][name]
            mean_got, mean_want = _running_mean(name, got), _running_mean(name, value)
            drifted = (
                key == "rolling_metrics"
                and mean_got is not None
                and mean_want is not None
                and abs(mean_got - mean_want) <= want.rolling_drift
            )
            assert close(got, value, tol) or drifted, (key, name, got, value, want.rolling_drift)
