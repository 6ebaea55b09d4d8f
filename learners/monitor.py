"""Signals that a model says strange things, before any label comes.

A ``Monitor`` lives inside a shard's learner, so it is checkpointed with the model and a
replay computes the same signals. It summarises tumbling windows of ``window`` predictions
(and of one event in ``sample_every``'s features) and, when a window closes, tests it
against a reference: the ``reference_windows`` windows before the previous one. Leaving
the previous window out makes a change complete wherever it starts: the window after the
one it starts in is all "after", its reference all "before", so it is caught within two
windows.

Each test gives a score, a z-score under the hypothesis that nothing changed:

- ``prediction_shift``: per predicted class, its share against the reference's (for
  regression: the mean and the spread of the predicted values);
- ``prediction_collapse``: the share of the window's most predicted class, one-sided, and
  only when that class took nearly every prediction;
- ``null_predictions``: the share of None or NaN predictions, one-sided (a rise);
- ``feature_shift``: per numeric feature, its location: the mean of the square roots of its
  deviations from its centre, signed as they are, in standard errors (a heavy tail sways
  the mean of roots far less than the mean of the values);
- ``feature_spread``: per numeric feature, the mean square root of its absolute deviations
  from its centre (Levene's test on roots: a change of spread, such as a doubled variance,
  without the false alarms a heavy tail gives a variance ratio); left to ``feature_shift``
  in a window where the mean moved, as deviations from the old centre grow with it;
- ``feature_set``: per feature, the share of sampled events that carry it (one that vanishes
  or appears, wholly or in part);
- ``category_shift``: per string (or bool) feature, the share of each category frequent
  enough in the reference to be tested, and of all the others together (new values
  included): a flood of one new value, or a move between known ones.

Calibration. The thresholds come from a false-alarm budget,
``expected_events_between_false_alarms`` (E): a window of W events may raise a false alarm
with probability W / E, shared among the window's K tests (Bonferroni), so each test's
threshold is the normal quantile of ``1 - W / (E K)`` (two-sided where the test is). Real
streams are not independent draws (a feature drifts slowly, predictions move while the
model learns), so the first ``warmup_windows`` windows raise nothing and measure, per test,
how far apart windows of this very stream are while nothing happens: the mean squared
score over the warm-up (a z-score's is 1) is a variance inflation that widens the
threshold, taken at its lower confidence bound and never below 1 (`_inflation`).
The calibration is deterministic (no random draw), so a replay and a restored shard agree.

Explanation. An alarm records its signal, the feature (or class, or category) responsible,
its window (first and last offsets and event times), the score and the threshold, and what
was measured now and in the reference. Per event the cost is a counter for the prediction
and, for one event in ``sample_every``, a pass over its features; the tests run when a
window closes (``python -m bench monitor`` measures both).
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SIGNALS", "Monitor", "MonitorSpec"]

SIGNALS = (
    "prediction_shift",
    "prediction_collapse",
    "null_predictions",
    "feature_shift",
    "feature_spread",
    "feature_set",
    "category_shift",
)
_ONE_SIDED = frozenset({"prediction_collapse", "null_predictions"})
_ALARMS_KEPT = 50
# Other keys an alarm lists as past their threshold too, beside the one it names.
_ALSO_KEPT = 10
# Category labels in alarms and metric labels are cut to this length: they come from data.
_LABEL_CHARS = 64
# A score for a change from a constant: larger than any threshold, and finite so that the
# stats stay JSON.
_CONSTANT_CHANGED = 1e6
# Fewer sampled values than this in a window (or its reference) make no test of a feature.
_MIN_VALUES = 20
# A category is tested on its own when the reference's share promises this many of the
# window's values (below that a share's z-score is not near normal); the rest are pooled.
_MIN_EXPECTED = 5.0
# One class taking at least this share of a window's predictions is a collapse.
_COLLAPSED = 0.99
# Warm-up scores needed to calibrate a test on its own, and the confidence of the bound
# taken from them (`_inflation`).
_MIN_CALIBRATION = 3
_CONFIDENCE = 0.9
# Numeric features whose centre is kept (`_Moments`); past them a window's first value is
# its centre (its spread then goes untested), so that no feature name grows the state.
_SHIFTS_KEPT = 10_000
# The stand-in for a category beyond ``max_categories`` in a window's counts.
_OVERFLOW = None
_NORMAL = statistics.NormalDist()
# Bumped when the monitor's state changes shape: a checkpoint of another version restarts
# its monitor (a fresh warm-up) instead of reading state it does not have.
_STATE_VERSION = 3


class MonitorSpec(BaseModel):
    """The label-free monitor's windows and false-alarm budget (a model spec's ``monitor``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=1000, ge=50)
    sample_every: int = Field(default=3, ge=1)
    warmup_windows: int = Field(default=10, ge=0)
    reference_windows: int = Field(default=4, ge=1, le=50)
    expected_events_between_false_alarms: float = Field(default=1e7, gt=0)
    max_categories: int = Field(default=1_000, ge=10)

    @model_validator(mode="after")
    def _budget_above_window(self) -> MonitorSpec:
        if self.expected_events_between_false_alarms < 10 * self.window:
            raise ValueError(
                "expected_events_between_false_alarms must be at least 10 windows "
                f"({10 * self.window} events), got {self.expected_events_between_false_alarms:g}"
            )
        return self


class _Moments:
    """Count and sums of some values about a centre, the shift (the first window's mean,
    so that windows add up): the sums of ``d = x - shift``, of ``abs(d)``, of its square
    root ``r``, and of ``r`` signed as ``d``. The tests read the roots: a heavy tail sways
    their means far less than those of the values or of their squares.

    >>> m = _Moments([4, 0.0, 0.0, 10.0, 6.0, 0.0])  # -1, 1, -4, 4 about 0
    >>> m.mean, m.deviation, m.root, m.root_var, m.signed_root, m.signed_root_var
    (0.0, 2.5, 1.5, 0.25, 0.0, 2.5)
    >>> m.merge(_Moments([2, 10.0, -9.0, 9.0, 4.0, -4.0]))  # 5 and 6, about 10
    >>> round(m.mean, 4), m.root
    (1.8333, nan)
    """

    __slots__ = ("n", "shift", "sums")

    def __init__(self, sums: list[float] | None = None) -> None:
        sums = sums or [0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self.n, self.shift, self.sums = int(sums[0]), sums[1], sums[2:]

    def merge(self, other: _Moments) -> None:
        if not other.n:
            return
        if not self.n:
            self.shift = other.shift
        s1, *roots = other.sums
        if other.shift != self.shift:  # re-centred; the deviations cannot be
            s1 += other.n * (other.shift - self.shift)
            roots = [math.nan] * 3
        self.n += other.n
        self.sums = [a + b for a, b in zip(self.sums, (s1, *roots), strict=True)]

    def _per_value(self, i: int) -> float:
        return self.sums[i] / self.n if self.n else 0.0

    @property
    def mean(self) -> float:
        return self.shift + self._per_value(0)

    @property
    def deviation(self) -> float:
        """The mean absolute deviation from the centre."""
        return self._per_value(1)

    @property
    def root(self) -> float:
        """The mean root deviation (NaN: windows of other centres): the spread's test."""
        return self._per_value(2)

    @property
    def root_var(self) -> float:
        return max(0.0, self.deviation - self.root**2)

    @property
    def signed_root(self) -> float:
        """The mean signed root deviation: the location's test."""
        return self._per_value(3)

    @property
    def signed_root_var(self) -> float:
        return max(0.0, self.deviation - self.signed_root**2)


class _Window:
    """What one finished window holds: counts and moments, no sample."""

    __slots__ = (
        "categories",
        "classes",
        "first_ms",
        "first_offset",
        "last_ms",
        "last_offset",
        "n",
        "nulls",
        "numeric",
        "predicted",
        "presence",
        "sampled",
    )

    def __init__(self) -> None:
        self.n = self.nulls = self.sampled = 0
        self.classes: dict[Any, int] = {}
        self.predicted = _Moments()
        self.presence: dict[str, int] = {}
        self.numeric: dict[str, _Moments] = {}
        self.categories: dict[str, dict[Any, int]] = {}
        self.first_offset = self.last_offset = -1
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def merge(self, other: _Window) -> None:
        """Add ``other``'s counts to these (to build a reference of several windows)."""
        self.n += other.n
        self.nulls += other.nulls
        self.sampled += other.sampled
        _add_counts(self.classes, other.classes)
        self.predicted.merge(other.predicted)
        _add_counts(self.presence, other.presence)
        for name, moments in other.numeric.items():
            mine = self.numeric.get(name)
            if mine is None:
                mine = self.numeric[name] = _Moments()
            mine.merge(moments)
        for name, counts in other.categories.items():
            _add_counts(self.categories.setdefault(name, {}), counts)


class _Test:
    """One test of a closed window: its signal, what it is about, its score, and the
    values compared (now, and in the reference)."""

    __slots__ = ("before", "category", "feature", "now", "score", "signal")

    def __init__(
        self,
        signal: str,
        feature: str | None,
        category: str | None,
        score: float,
        now: float,
        before: float,
    ) -> None:
        self.signal, self.feature, self.category = signal, feature, category
        self.score, self.now, self.before = score, now, before

    @property
    def key(self) -> str:
        return f"{self.feature or ''}={self.category or ''}"


_Add = Callable[[_Test], None]


class Monitor:
    """Label-free signals for one shard; fed by the learner, read by ``stats``."""

    def __init__(self, spec: MonitorSpec, classifier: bool) -> None:
        self.spec = spec
        self._classifier = classifier
        self._reset()

    def _reset(self) -> None:
        self._version = _STATE_VERSION
        self._every, self._size = self.spec.sample_every, self.spec.window
        # Each numeric series' centre: its first window's mean (that window is about its
        # first value), kept so that windows add up.
        self._shifts: dict[str, float] = {}
        self._predicted_shift: float | None = None
        self._history: collections.deque[_Window] = collections.deque(
            maxlen=self.spec.reference_windows + 1
        )
        self._open()
        self.windows = 0
        # Warm-up: the squared scores of each test; then the variance inflation of each.
        self._warmup_z2: dict[tuple[str, str], list[float]] = {}
        self._inflation: dict[tuple[str, str], float] = {}
        self._signal_inflation: dict[str, float] = {}
        self.values: dict[str, float | None] = dict.fromkeys(SIGNALS)
        self.thresholds: dict[str, float | None] = dict.fromkeys(SIGNALS)
        self.responsible: dict[str, str | None] = dict.fromkeys(SIGNALS)
        self.alarms: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self.alarm_seq = 0
        self.alarm_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=_ALARMS_KEPT)

    def _open(self) -> None:
        """Start a window: the running counts the hot path updates."""
        self._n = self._nulls = self._sampled = 0
        self._countdown = self.spec.sample_every
        self._classes: dict[Any, int] = {}
        self._predicted: list[float] = []
        self._presence: dict[str, int] = {}
        self._numeric: dict[str, list[float]] = {}
        self._categories: dict[str, dict[Any, int]] = {}
        self._first_offset = -1
        self._first_ms: int | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if state.get("_version") != _STATE_VERSION:
            self._reset()  # a checkpoint of an older monitor: warm up afresh

    def observe(
        self, features: Mapping[str, Any], y_pred: Any, offset: int, ts_ms: int | None = None
    ) -> None:
        """One scored event: its features (all of them, not only those the model selects:
        an input vanishing upstream is news too), the prediction made for it, its offset
        and its event time in milliseconds (None when unknown)."""
        if not self._n:
            self._first_offset, self._first_ms = offset, ts_ms
        self._n += 1
        if y_pred is None or (type(y_pred) is float and y_pred != y_pred):
            self._nulls += 1
        elif self._classifier:
            classes = self._classes
            classes[y_pred] = classes.get(y_pred, 0) + 1
        else:
            try:
                value = float(y_pred)
            except (TypeError, ValueError, OverflowError):
                value = math.nan
            if value - value == 0:
                self._predicted.append(value)
            else:
                self._nulls += 1
        self._countdown -= 1
        if not self._countdown:
            self._countdown = self._every
            self._sample(features)
        if self._n >= self._size:
            self._close_window(offset, ts_ms)

    def _sample(self, features: Mapping[str, Any]) -> None:
        self._sampled += 1
        presence = self._presence
        numeric = self._numeric
        for name, value in features.items():
            kind = type(value)
            if kind is float or kind is int:
                if value - value == 0:  # finite (NaN and infinities give NaN): counted
                    # present by its moments when the window closes
                    sums = numeric.get(name)
                    if sums is None:
                        shift = self._shifts.get(name, value)
                        sums = numeric[name] = [0, shift, 0.0, 0.0, 0.0, 0.0]
                    sums[0] += 1
                    d = value - sums[1]
                    sums[2] += d
                    if d < 0:
                        sums[3] -= d
                        d = (-d) ** 0.5
                        sums[4] += d
                        sums[5] -= d
                    else:
                        sums[3] += d
                        d **= 0.5
                        sums[4] += d
                        sums[5] += d
                    continue
            elif kind is str or kind is bool:
                counts = self._categories.get(name)
                if counts is None:
                    counts = self._categories[name] = {}
                if value in counts:
                    counts[value] += 1
                elif len(counts) < self.spec.max_categories:
                    counts[value] = 1
                else:
                    counts[_OVERFLOW] = counts.get(_OVERFLOW, 0) + 1
            elif value is None:
                continue
            presence[name] = presence.get(name, 0) + 1

    def _close_window(self, offset: int, ts_ms: int | None) -> None:
        window = _Window()
        window.n, window.nulls, window.sampled = self._n, self._nulls, self._sampled
        window.classes = self._classes
        predicted = self._predicted
        if predicted:
            shift = predicted[0] if self._predicted_shift is None else self._predicted_shift
            window.predicted = _Moments(_sums(predicted, shift))
        window.presence = self._presence
        window.numeric = {name: _Moments(sums) for name, sums in self._numeric.items()}
        for name, moments in window.numeric.items():
            if name not in self._shifts and len(self._shifts) < _SHIFTS_KEPT:
                self._shifts[name] = moments.mean
        if self._predicted_shift is None and window.predicted.n:
            self._predicted_shift = window.predicted.mean
        for name, moments in window.numeric.items():
            window.presence[name] = window.presence.get(name, 0) + moments.n
        window.categories = self._categories
        window.first_offset, window.first_ms = self._first_offset, self._first_ms
        window.last_offset, window.last_ms = offset, ts_ms
        self._open()
        tests: list[_Test] = []
        if len(self._history) >= 2:
            reference = _Window()
            for earlier in list(self._history)[1:]:
                reference.merge(earlier)
            tests = self._tests(window, reference)
        self._history.appendleft(window)
        index = self.windows
        self.windows += 1
        if index < self.spec.warmup_windows:
            for test in tests:
                self._warmup_z2.setdefault((test.signal, test.key), []).append(test.score**2)
            if index + 1 == self.spec.warmup_windows:
                self._calibrate()
            self.values = dict.fromkeys(SIGNALS)
            return
        self._judge(window, tests)

    def _calibrate(self) -> None:
        """Each test's variance inflation from the warm-up's scores (see the module doc)."""
        by_signal: dict[str, list[float]] = {}
        for (signal, key), z2 in self._warmup_z2.items():
            if len(z2) >= _MIN_CALIBRATION:
                inflation = _inflation(z2)
                self._inflation[signal, key] = inflation
                by_signal.setdefault(signal, []).append(inflation)
        self._signal_inflation = {s: statistics.median(i) for s, i in by_signal.items()}
        self._warmup_z2 = {}

    def threshold(self, signal: str, key: str, tests: int) -> float:
        """The score above which a test raises an alarm, when a window holds ``tests``."""
        spec = self.spec
        alpha = min(0.5, spec.window / (spec.expected_events_between_false_alarms * tests))
        z = _NORMAL.inv_cdf(1 - (alpha if signal in _ONE_SIDED else alpha / 2))
        inflation = self._inflation.get((signal, key))
        if inflation is None:  # not seen in the warm-up: as its signal's median test
            inflation = self._signal_inflation.get(signal, 1.0)
        return z * math.sqrt(inflation)

    def _judge(self, window: _Window, tests: list[_Test]) -> None:
        """Each signal's worst test in this window; an alarm where it passes its threshold."""
        worst: dict[str, tuple[float, _Test, float]] = {}
        over: dict[str, list[_Test]] = {}
        limits = [self.threshold(test.signal, test.key, len(tests)) for test in tests]
        # A series whose mean moved has its deviations from the old centre grow as well:
        # its spread is left untested in that window, the mean's alarm says it.
        moved = {
            test.feature
            for test, limit in zip(tests, limits, strict=True)
            if test.score > limit and self._moment(test) == "mean"
        }
        for test, limit in zip(tests, limits, strict=True):
            if test.feature in moved and self._moment(test) == "spread":
                continue
            ratio = test.score / limit
            if test.signal not in worst or ratio > worst[test.signal][0]:
                worst[test.signal] = (ratio, test, limit)
            if ratio > 1:
                over.setdefault(test.signal, []).append(test)
        for signal in SIGNALS:
            found = worst.get(signal)
            self.values[signal] = None if found is None else _finite(found[1].score)
            self.thresholds[signal] = None if found is None else found[2]
            self.responsible[signal] = None if found is None else found[1].key
            if found is None or found[0] <= 1:
                continue
            ratio, test, limit = found
            self.alarms[signal] += 1
            self.alarm_seq += 1
            self.alarm_log.append(
                {
                    "seq": self.alarm_seq,
                    "signal": signal,
                    "feature": test.feature,
                    "category": test.category,
                    "value": _finite(test.score),
                    "threshold": limit,
                    "now": _finite(test.now),
                    "before": _finite(test.before),
                    "first_offset": window.first_offset,
                    "last_offset": window.last_offset,
                    "first_event_ms": window.first_ms,
                    "last_event_ms": window.last_ms,
                    "also": [t.key for t in over[signal] if t is not test][:_ALSO_KEPT],
                }
            )

    def _moment(self, test: _Test) -> str | None:
        """Whether ``test`` is a numeric series' "mean" or "spread" test, else None."""
        if test.signal == "feature_shift":
            return "mean"
        if test.signal == "feature_spread":
            return "spread"
        if test.signal == "prediction_shift" and not self._classifier:
            return test.category
        return None

    def _tests(self, now: _Window, before: _Window) -> list[_Test]:
        tests: list[_Test] = []
        add = tests.append
        if now.n and before.n:
            z = _share_z(now.nulls, now.n, before.nulls, before.n)
            shares = now.nulls / now.n, before.nulls / before.n
            add(_Test("null_predictions", None, None, z, *shares))
        if self._classifier:
            self._class_tests(now, before, add)
        else:
            self._moment_tests(
                "prediction_shift", None, now.predicted, before.predicted, add, ("mean", "spread")
            )
        if now.sampled and before.sampled:
            for name in now.presence.keys() | before.presence.keys():
                k1, k0 = now.presence.get(name, 0), before.presence.get(name, 0)
                z = _share_z(k1, now.sampled, k0, before.sampled)
                add(_Test("feature_set", name, None, abs(z), k1 / now.sampled, k0 / before.sampled))
        for name, moments in now.numeric.items():
            earlier = before.numeric.get(name)
            if earlier is not None:
                self._moment_tests("feature_shift", name, moments, earlier, add, (None, None))
        for name, counts in now.categories.items():
            earlier_counts = before.categories.get(name)
            if earlier_counts is not None:
                _category_tests("category_shift", name, counts, earlier_counts, add)
        return tests

    def _class_tests(self, now: _Window, before: _Window, add: _Add) -> None:
        n1, n0 = sum(now.classes.values()), sum(before.classes.values())
        if not n1 or not n0:
            return
        _category_tests("prediction_shift", None, now.classes, before.classes, add)
        top = max(now.classes, key=lambda c: (now.classes[c], str(c)))
        k1, k0 = now.classes[top], before.classes.get(top, 0)
        share = k1 / n1
        z = _share_z(k1, n1, k0, n0) if share >= _COLLAPSED else 0.0
        add(_Test("prediction_collapse", None, _label(top), z, share, k0 / n0))

    @staticmethod
    def _moment_tests(
        signal: str,
        feature: str | None,
        now: _Moments,
        before: _Moments,
        add: _Add,
        names: tuple[str | None, str | None],
    ) -> None:
        """The mean's and the spread's tests of one numeric series (for a feature, the
        spread is its own signal)."""
        if now.n < _MIN_VALUES or before.n < _MIN_VALUES:
            return
        spread_signal = "feature_spread" if feature is not None else signal
        z_mean = z_spread = 0.0
        if now.shift == before.shift and now.root == now.root and before.root == before.root:
            # Means of roots (signed for the location) as z-scores (not from windows about
            # other centres: the first of a feature only).
            z_mean = _mean_z(
                now.signed_root,
                before.signed_root,
                now.signed_root_var,
                before.signed_root_var,
                now.n,
                before.n,
            )
            z_spread = _mean_z(
                now.root, before.root, now.root_var, before.root_var, now.n, before.n
            )
        add(_Test(signal, feature, names[0], z_mean, now.mean, before.mean))
        add(_Test(spread_signal, feature, names[1], z_spread, now.deviation, before.deviation))

    def stats(self) -> dict[str, Any]:
        """The last finished window's signals (scores), thresholds and what is responsible
        for each, the alarms so far, and the last alarms with their explanation."""
        return {
            "windows": self.windows,
            "calibrated": self.windows >= self.spec.warmup_windows,
            "signals": dict(self.values),
            "thresholds": dict(self.thresholds),
            "responsible": dict(self.responsible),
            "shifted_feature": _feature_of(self.responsible["feature_shift"]),
            "alarms": dict(self.alarms),
            "alarm_seq": self.alarm_seq,
            "alarm_offsets": [[a["signal"], a["last_offset"]] for a in self.alarm_log],
            "alarm_log": [dict(a) for a in self.alarm_log],
        }


def _sums(values: list[float], shift: float) -> list[float]:
    """``[n, shift, the sums of d = x - shift, abs(d), its root r, and r signed as d]``,
    as the hot path keeps them for a feature (`Monitor._sample`).

    >>> _sums([1.0, 4.0, -9.0], 0.0)
    [3, 0.0, -4.0, 14.0, 6.0, 0.0]
    """
    deviations = [value - shift for value in values]
    roots = [abs(d) ** 0.5 for d in deviations]
    return [
        len(values),
        shift,
        sum(deviations),
        sum(r * r for r in roots),
        sum(roots),
        sum(math.copysign(r, d) for r, d in zip(roots, deviations, strict=True)),
    ]


def _inflation(z2: list[float]) -> float:
    """How much wider than a z-score's a test's scores spread over the warm-up: the lower
    confidence bound (``_CONFIDENCE``) of their mean square, at least 1. A lower bound, so
    that the few warm-up windows widen a threshold only where the stream clearly moves
    between windows, not by chance; the largest square is left out, as a fresh model's
    first windows move most.

    >>> _inflation([1.0] * 8), round(_inflation([9.0] * 8 + [400.0]), 2)
    (1.0, 5.4)
    """
    kept = sorted(z2)[:-1] if len(z2) > _MIN_CALIBRATION else list(z2)
    k = len(kept)
    # The chi-square quantile by Wilson and Hilferty's approximation.
    upper = k * (1 - 2 / (9 * k) + _NORMAL.inv_cdf(_CONFIDENCE) * math.sqrt(2 / (9 * k))) ** 3
    return max(1.0, sum(kept) / upper)


def _add_counts(into: dict[Any, int], counts: Mapping[Any, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def _mean_z(m1: float, m0: float, v1: float, v0: float, n1: int, n0: int) -> float:
    """How far mean ``m1`` (of ``n1`` values of variance ``v1``) is from ``m0``, in
    standard errors of the reference's variance ``v0`` (``v1``'s if ``v0`` is 0).

    >>> _mean_z(1.0, 0.0, 1.0, 1.0, 100, 100), _mean_z(2.0, 1.0, 0.0, 0.0, 5, 5)
    (7.0710678118654755, 1000000.0)
    """
    scale = v0 or v1
    if scale == 0.0:  # every value alike, in both
        return 0.0 if m1 == m0 else _CONSTANT_CHANGED
    return abs(m1 - m0) / math.sqrt(scale * (1 / n1 + 1 / n0))


def _share_z(k1: int, n1: int, k0: int, n0: int) -> float:
    """The two-proportion z-score of ``k1/n1`` against ``k0/n0`` (pooled variance).

    >>> round(_share_z(50, 100, 25, 100), 2), _share_z(0, 100, 0, 100)
    (3.65, 0.0)
    """
    p = (k1 + k0) / (n1 + n0)
    var = p * (1 - p) * (1 / n1 + 1 / n0)
    return 0.0 if var <= 0.0 else (k1 / n1 - k0 / n0) / math.sqrt(var)


def _category_tests(
    signal: str,
    feature: str | None,
    now: Mapping[Any, int],
    before: Mapping[Any, int],
    add: _Add,
) -> None:
    """Each category frequent enough in ``before`` against its share there, and all the
    others (rare, new, past the cap) pooled as one; named by the most frequent of them."""
    n1, n0 = sum(now.values()), sum(before.values())
    if n1 < _MIN_VALUES or n0 < _MIN_VALUES:
        return
    tested = [c for c, k in before.items() if c is not _OVERFLOW and k * n1 / n0 >= _MIN_EXPECTED]
    for category in tested:
        k1, k0 = now.get(category, 0), before[category]
        z = abs(_share_z(k1, n1, k0, n0))
        add(_Test(signal, feature, _label(category), z, k1 / n1, k0 / n0))
    known = set(tested)
    k1 = n1 - sum(now.get(c, 0) for c in known)
    k0 = n0 - sum(before[c] for c in known)
    if k1 or k0:
        others = [(k, c) for c, k in now.items() if c not in known and c is not _OVERFLOW]
        name = _label(max(others, key=lambda kc: (kc[0], str(kc[1])))[1]) if others else "other"
        z = abs(_share_z(k1, n1, k0, n0))
        add(
            _Test(
                signal,
                feature,
                f"{name} (and others)" if len(others) > 1 else name,
                z,
                k1 / n1,
                k0 / n0,
            )
        )


def _label(value: Any) -> str:
    """A category or class as a bounded string for logs and metric labels."""
    return str(value)[:_LABEL_CHARS]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else _CONSTANT_CHANGED


def _feature_of(key: str | None) -> str | None:
    if not key:
        return None
    feature = key.split("=", 1)[0]
    return feature or None
