"""Signals that a model says strange things, before any label comes.

A ``Monitor`` lives inside a shard's learner, so it is checkpointed with the model and a
replay computes the same signals. It looks at tumbling windows of predictions (and of
sampled events' features) and compares each finished window with the one before it:

- ``prediction_shift``: for classification, the total variation distance between the
  windows' shares of predicted classes; for regression, the shift of the mean predicted
  value in standard deviations of the earlier window;
- ``null_predictions``: the share of predictions that are None or NaN;
- ``feature_shift``: per numeric feature, the shift of its mean in standard deviations of
  the earlier window (the largest is the signal, the feature named);
- ``unseen_categories``: string values never seen before in a feature, once the first
  window has passed, and ``cardinality`` when a feature's distinct values pass the cap;
- ``feature_set``: features present in most events of one window and absent from the
  other (appeared or disappeared).

A signal over its threshold at the end of a window raises an alarm (counted, with the
window's last offset). The first windows are a warm-up: a fresh model's predictions move
while it learns. Per event the cost is a counter and a sum for the prediction, and for one
event in ``sample_every`` a pass over its features (bench/bench_worker.py measures it).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SIGNALS", "Monitor", "MonitorSpec"]

SIGNALS = (
    "prediction_shift",
    "null_predictions",
    "feature_shift",
    "unseen_categories",
    "cardinality",
    "feature_set",
)
_ALARMS_KEPT = 50
# The shift of a feature that was constant and changed: larger than any threshold, and
# finite so that the stats stay JSON.
_CONSTANT_CHANGED = 1e6


class MonitorSpec(BaseModel):
    """The label-free monitor's windows and thresholds (a model spec's ``monitor``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=1000, ge=50)
    sample_every: int = Field(default=5, ge=1)
    warmup_windows: int = Field(default=2, ge=0)
    prediction_shift: float = Field(default=0.15, gt=0)
    null_share: float = Field(default=0.05, gt=0, le=1)
    feature_shift: float = Field(default=0.5, gt=0)
    unseen_share: float = Field(default=0.05, gt=0, le=1)
    max_categories: int = Field(default=10_000, ge=10)
    presence: float = Field(default=0.5, gt=0, lt=1)


class _Moments:
    """Count, mean and variance of a window's values (Welford)."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


def _shift(now: _Moments, before: _Moments) -> float:
    """How far the mean moved, in standard deviations of the earlier window."""
    if now.n < 2 or before.n < 2:
        return 0.0
    spread = before.std or now.std
    if spread == 0.0:
        return 0.0 if now.mean == before.mean else _CONSTANT_CHANGED
    return abs(now.mean - before.mean) / spread


class Monitor:
    """Label-free signals for one shard; fed by the learner, read by ``stats``."""

    def __init__(self, spec: MonitorSpec, classifier: bool) -> None:
        self.spec = spec
        self._classifier = classifier
        self._classes: collections.Counter[Any] = collections.Counter()
        self._previous_classes: collections.Counter[Any] | None = None
        self._values = _Moments()
        self._previous_values: _Moments | None = None
        self._nulls = 0
        self._seen = 0
        self._sampled = 0
        self._features: dict[str, _Moments] = {}
        self._previous_features: dict[str, _Moments] | None = None
        self._presence: collections.Counter[str] = collections.Counter()
        self._previous_presence: dict[str, float] | None = None
        self._categories: dict[str, set[str]] = {}
        self._unseen = 0
        self._categorical = 0
        self.windows = 0
        self.values: dict[str, float | None] = dict.fromkeys(SIGNALS)
        self.shifted_feature: str | None = None
        self.alarms: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self.alarm_offsets: collections.deque[tuple[str, int]] = collections.deque(
            maxlen=_ALARMS_KEPT
        )
        self.unseen_total = 0

    def observe(self, features: Mapping[str, Any], y_pred: Any, offset: int) -> None:
        """One scored event: its features (all of them, not only those the model selects:
        an input vanishing upstream is news too) and the prediction made for it."""
        if y_pred is None or (type(y_pred) is float and y_pred != y_pred):
            self._nulls += 1
        elif self._classifier:
            self._classes[y_pred] += 1
        else:
            try:
                self._values.add(float(y_pred))
            except (TypeError, ValueError, OverflowError):
                self._nulls += 1
        if offset % self.spec.sample_every == 0:
            self._sample(features)
        self._seen += 1
        if self._seen >= self.spec.window:
            self._close_window(offset)

    def _sample(self, features: Mapping[str, Any]) -> None:
        self._sampled += 1
        presence = self._presence
        for name, value in features.items():
            presence[name] += 1
            kind = type(value)
            if kind is float or kind is int:
                moments = self._features.get(name)
                if moments is None:
                    moments = self._features[name] = _Moments()
                if value == value and abs(value) != math.inf:
                    moments.add(value)
            elif kind is str:
                self._categorical += 1
                seen = self._categories.get(name)
                if seen is None:
                    seen = self._categories[name] = set()
                if value not in seen:
                    if self.windows > 0:
                        self._unseen += 1
                        self.unseen_total += 1
                    if len(seen) < self.spec.max_categories:
                        seen.add(value)

    def _close_window(self, offset: int) -> None:
        spec = self.spec
        values = self.values
        values["null_predictions"] = self._nulls / self._seen
        if self._classifier:
            values["prediction_shift"] = (
                None
                if self._previous_classes is None
                else _total_variation(self._classes, self._previous_classes)
            )
        else:
            values["prediction_shift"] = (
                None
                if self._previous_values is None
                else _shift(self._values, self._previous_values)
            )
        shifts = (
            {}
            if self._previous_features is None
            else {
                name: _shift(moments, self._previous_features[name])
                for name, moments in self._features.items()
                if name in self._previous_features
            }
        )
        self.shifted_feature = max(shifts, key=shifts.__getitem__) if shifts else None
        values["feature_shift"] = shifts[self.shifted_feature] if self.shifted_feature else None
        values["unseen_categories"] = (
            self._unseen / self._categorical if self.windows > 0 and self._categorical else None
        )
        values["cardinality"] = float(
            max((len(seen) for seen in self._categories.values()), default=0)
        )
        share = (
            {name: n / self._sampled for name, n in self._presence.items()} if self._sampled else {}
        )
        changed = None
        if self._previous_presence is not None and self._sampled:
            gone = {n for n, s in self._previous_presence.items() if s >= spec.presence}
            gone -= {n for n, s in share.items() if s > 0}
            new = {n for n, s in share.items() if s >= spec.presence}
            new -= {n for n, s in self._previous_presence.items() if s > 0}
            changed = float(len(gone) + len(new))
        values["feature_set"] = changed
        self.windows += 1
        if self.windows > spec.warmup_windows:
            limits = {
                "prediction_shift": spec.prediction_shift,
                "null_predictions": spec.null_share,
                "feature_shift": spec.feature_shift,
                "unseen_categories": spec.unseen_share,
                "cardinality": spec.max_categories - 1,
                "feature_set": 0.5,
            }
            for signal, limit in limits.items():
                value = values[signal]
                if value is not None and value > limit:
                    self.alarms[signal] += 1
                    self.alarm_offsets.append((signal, offset))
        self._previous_classes, self._classes = self._classes, collections.Counter()
        self._previous_values, self._values = self._values, _Moments()
        if self._sampled:
            self._previous_features, self._features = self._features, {}
            self._previous_presence, self._presence = share, collections.Counter()
        self._nulls = self._seen = self._sampled = self._unseen = self._categorical = 0

    def stats(self) -> dict[str, Any]:
        """The last finished window's signals, the alarms so far and where they were."""
        return {
            "windows": self.windows,
            "signals": dict(self.values),
            "shifted_feature": self.shifted_feature,
            "alarms": dict(self.alarms),
            "alarm_offsets": [list(a) for a in self.alarm_offsets],
            "unseen_categories": self.unseen_total,
        }


def _total_variation(now: collections.Counter[Any], before: collections.Counter[Any]) -> float:
    """Half the L1 distance between two counters' shares (0: same, 1: disjoint)."""
    n_now, n_before = sum(now.values()), sum(before.values())
    if not n_now or not n_before:
        return 0.0
    keys = now.keys() | before.keys()
    return sum(abs(now[k] / n_now - before[k] / n_before) for k in keys) / 2
