"""One shard's model, trained test-then-train on that shard's events in offset order."""

from __future__ import annotations

import collections
import itertools
import math
import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from river import base, compose

from livelearn.errors import InvalidEvent, SnapshotRefused
from livelearn.learners.estimate import AccuracyEstimate
from livelearn.learners.monitor import Monitor, MonitorSpec
from livelearn.learners.snapshot import Binding, SnapshotCodec
from livelearn.learners.spec import DelayedLabels, ModelSpec

__all__ = ["LABEL_OUTCOMES", "Learner", "in_holdout", "load_learner"]

# What became of pending predictions (Learner.label_counts): a label joined them, or they
# expired. Labels that join nothing are dead letters (label_unmatched, _duplicate, _late).
LABEL_OUTCOMES = ("joined", "expired")

# Enough history to line drift detections up with a dashboard without growing the snapshot.
_DRIFT_OFFSETS_KEPT = 100
# A rise ADWIN detects is counted once this many labelled events after it confirm it, at
# this one-sided z (a 1e-3 chance for a fluctuation, on top of ADWIN's own rarity; python
# -m bench monitor counts what passes on stationary streams): long enough for a real rise
# to stand out, short enough to page soon after ADWIN.
_DRIFT_CONFIRM_EVENTS = 1000
_DRIFT_CONFIRM_Z = 3.09


def in_holdout(event_id: str, share: float) -> bool:
    """Whether the event belongs to a model's holdout: the same answer for an id on every
    worker and every replay (CRC-32 of the id, in steps of 1/10,000).

    >>> in_holdout("e1", 0.0), in_holdout("e1", 0.9999)
    (False, True)
    """
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % 10_000 < share * 10_000


def _final_step(model: Any) -> Any:
    return list(model.steps.values())[-1] if isinstance(model, compose.Pipeline) else model


def _metric_value(value: Any) -> float | None:
    """Return a metric value as a float, or None when it is not a finite number.

    Examples
    --------
    >>> _metric_value(0.5), _metric_value(float("nan")), _metric_value(float("inf"))
    (0.5, None, None)

    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class Learner:
    """A River model with its metrics and drift detector, fed one event at a time.

    ``process`` runs the loop of ``river.evaluate.progressive_val_score``: predict, score the
    prediction against the label, feed the drift detector, then learn. On a one-partition topic
    the model and its metrics therefore equal River's own loop over the same events.

    Parameters
    ----------
    spec
        The model spec; the learner builds a fresh pipeline, fresh cumulative metrics, rolling
        metrics over ``spec.rolling_window`` labelled events, and the drift detector.

    Attributes
    ----------
    events_learned
        Labelled events learned from.
    events_scored
        Events predicted, labelled or not.
    drift_detections
        Drift detections since the learner was built.
    drift_offsets
        Offsets of the last 100 events on which drift was detected.
    last_offset
        Offset of the last event processed, or None.

    """

    # Defaults for a learner pickled before the rolled metrics: its windows are bounded
    # deques, and its rolling metrics are rebuilt when first read.
    _rolled: list[Any] | None = None
    _rolled_inputs = (0, 0)
    _window_cap = sys.maxsize
    # A learner pickled before the accuracy estimate has none (its pending predictions
    # carry no window), and one is built for it when restored (`__setstate__`).
    _estimate: AccuracyEstimate | None = None

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._model: Any = spec.build_pipeline()
        self._classifier = spec.task != "regression"
        self._names = tuple(spec.metrics)
        self.reset_metrics()
        # River's Classifier.predict_one is max(proba, key=proba.get); when the final step keeps
        # it, the label is derived from the probabilities already computed, saving a prediction.
        final = _final_step(self._model)
        self._label_from_proba = (
            self._classifier and type(final).predict_one is base.Classifier.predict_one
        )
        self._detector: Any = spec.build_drift()
        self._binary_detector = isinstance(self._detector, base.BinaryDriftDetector)
        self._drift_errors = _error_window(self._detector)
        # An ADWIN detection of a rise, awaiting confirmation: (the dropped part's count
        # and error mean, the detection's offset); see `_confirm_drift`.
        self._drift_pending: tuple[float, float, int] | None = None
        self._select = spec if spec.include is not None or spec.exclude else None
        monitor = getattr(spec, "monitor", None)
        self._monitor = None if monitor is None else Monitor(monitor, self._classifier)
        self._estimate = _estimate_for(spec)
        self.events_learned = 0
        self.events_scored = 0
        self.drift_detections = 0
        self.drift_offsets: collections.deque[int] = collections.deque(maxlen=_DRIFT_OFFSETS_KEPT)
        self.last_offset: int | None = None
        # Delayed labels (spec.delayed_labels): predictions awaiting their label, by event
        # id in prediction order (the features learned on, the prediction, the
        # probabilities a metric scores, the event time, and for the accuracy estimate the
        # window and the confidence), and bounded records of joined and expired ids.
        self._pending: dict[str, tuple[Any, ...]] = {}
        self._joined: dict[str, None] = {}
        self._expired: dict[str, None] = {}
        self._newest_ms = 0
        self.label_counts = dict.fromkeys(LABEL_OUTCOMES, 0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_drift_errors" not in state:  # a checkpoint from before one-sided drift
            detector = self._detector
            errors = _error_window(detector)
            if errors is not None:  # the squares count only from the next detection on
                errors[:] = [detector.width, detector.total, 0.0]
            self._drift_errors = errors
            self._drift_pending = None
        if "_estimate" not in state:  # a checkpoint from before the accuracy estimate
            self._estimate = _estimate_for(self.spec)

    def reset_metrics(self) -> None:
        """Start the cumulative and rolling metrics afresh; the model, counts and drift
        detector are kept (a replay from a checkpoint scores only the replayed events)."""
        self._metrics = tuple(self.spec.build_metrics())
        # Each metric is updated with what progressive_val_score would give it: class
        # probabilities when it does not require labels, else the predicted label.
        self._wants_proba = tuple(
            self._classifier and not getattr(metric, "requires_labels", True)
            for metric in self._metrics
        )
        self._label_metrics = tuple(
            m for m, p in zip(self._metrics, self._wants_proba, strict=True) if not p
        )
        self._proba_metrics = tuple(
            m for m, p in zip(self._metrics, self._wants_proba, strict=True) if p
        )
        # Rolling metrics: the inputs each kind of metric was given, and metrics fed the
        # last ``rolling_window`` of them, brought up to date when read (`_rolling_metrics`)
        # with what changed since: updated with the new inputs, reverted for those that
        # left the window. Appending costs an event far less than river.utils.Rolling's
        # update-and-revert, and reading costs what changed, not the window.
        self._label_window: collections.deque[tuple[Any, Any]] = collections.deque()
        self._proba_window: collections.deque[tuple[Any, Any]] = collections.deque()
        self._rolled: list[Any] | None = None  # None: rebuilt from the windows when read
        self._rolled_inputs = (0, 0)  # inputs of each window the rolled metrics hold
        self._window_cap = 2 * self.spec.rolling_window
        self._evaluated = 0
        # The holdout's own metrics (spec.holdout), fed as the progressive ones are.
        share = getattr(self.spec, "holdout", 0.0)
        self._holdout_metrics = tuple(self.spec.build_metrics()) if share else ()
        self.holdout_scored = 0

    def __repr__(self) -> str:
        return (
            f"Learner(model={self.spec.name!r}, events_learned={self.events_learned}, "
            f"events_scored={self.events_scored})"
        )

    @property
    def model(self) -> base.Estimator:
        """The River estimator."""
        model: base.Estimator = self._model
        return model

    def process(
        self, features: Mapping[str, Any], label: Any | None, offset: int, ts_ms: int | None = None
    ) -> Any:
        """Predict, then, when ``label`` is given, score the prediction, watch drift and learn.

        Parameters
        ----------
        features
            The event's (sanitized) features; never modified.
        label
            The true label, or None for an event that is only scored.
        offset
            The event's offset, recorded as ``last_offset`` and in ``drift_offsets``.
        ts_ms
            The event's time in milliseconds, if known: the monitor's windows carry it.

        Returns
        -------
        Any
            The prediction made before learning: the predicted class for classification, the
            predicted value for regression; None while the model cannot predict yet (a fresh
            tree has no class to predict).

        Notes
        -----
        As in ``progressive_val_score``, a metric is not updated when the prediction is None or
        an empty probability dict; the drift detector is skipped in the same case. The event is
        still learned from.

        """
        x = features if self._select is None else self._select.select_features(features)
        if label is None:  # nothing to score: no probabilities asked for
            return self._scored(features, x, offset, ts_ms, scoring=False)[0]
        y_pred, proba = self._scored(features, x, offset, ts_ms)
        if self._estimate is not None:  # a delayed model's event that came with its label
            self._estimate_labelled(y_pred, proba, label, offset, ts_ms)
        self._learn(x, label, y_pred, proba, offset)
        return y_pred

    def score_holdout(
        self, features: Mapping[str, Any], label: Any, offset: int, ts_ms: int | None = None
    ) -> Any:
        """Score a labelled event of the holdout into the holdout metrics; never learn it."""
        x = features if self._select is None else self._select.select_features(features)
        y_pred, proba = self._scored(features, x, offset, ts_ms)
        if self._estimate is not None:
            self._estimate_labelled(y_pred, proba, label, offset, ts_ms)
        self._score_holdout(label, y_pred, proba)
        return y_pred

    def _estimate_labelled(
        self, y_pred: Any, proba: Any, label: Any, offset: int, ts_ms: int | None
    ) -> None:
        """A prediction and its label at once, for the accuracy estimate."""
        assert self._estimate is not None
        confidence = _confidence(y_pred, proba)
        window = self._estimate.predicted(confidence, offset, ts_ms)
        self._estimate.labelled(window, confidence, y_pred == label)

    def _score_holdout(self, label: Any, y_pred: Any, proba: Any) -> None:
        for metric, wants_proba in zip(self._holdout_metrics, self._wants_proba, strict=True):
            if wants_proba:
                if proba:
                    metric.update(label, proba)
            elif y_pred is not None:
                metric.update(label, y_pred)
        self.holdout_scored += 1

    def predict_pending(
        self, event_id: str, features: Mapping[str, Any], offset: int, ts_ms: int
    ) -> Any:
        """Score an event whose label comes later, and keep the prediction for `join`.

        Pending predictions beyond ``delayed_labels.max_pending``, or older than
        ``max_age_s`` behind the newest event time seen, expire (counted).

        Raises
        ------
        InvalidEvent
            ``duplicate_id``: a prediction for ``event_id`` is pending already (the first
            is kept).
        """
        delayed = self._delayed()
        if event_id in self._pending:
            raise InvalidEvent(
                "duplicate_id", f"a prediction for event {event_id!r} awaits its label already"
            )
        x = features if self._select is None else self._select.select_features(features)
        y_pred, proba = self._scored(features, x, offset, ts_ms)
        estimate = self._estimate
        if estimate is None:
            self._pending[event_id] = (x, y_pred, proba, ts_ms)
        else:
            confidence = proba.get(y_pred) if proba else None  # as `_confidence`, inlined
            window = estimate.predicted(confidence, offset, ts_ms)
            scored = proba if self._proba_metrics else None
            self._pending[event_id] = (x, y_pred, scored, ts_ms, window, confidence)
        self._newest_ms = max(self._newest_ms, ts_ms)
        oldest = self._newest_ms - delayed.max_age_s * 1000
        pending = self._pending
        while pending:
            first = next(iter(pending))
            if len(pending) <= delayed.max_pending and pending[first][3] >= oldest:
                break
            gone = pending.pop(first)
            if estimate is not None:
                estimate.expired(gone[4] if len(gone) > 4 else None)
            self._forget(self._expired, first)
            self.label_counts["expired"] += 1
        return y_pred

    def join(self, event_id: str, label: Any, offset: int, ts_ms: int) -> float:
        """Score the prediction kept for ``event_id`` against ``label``, then learn the
        features it was made on; returns the label's delay in seconds (event time).

        Raises
        ------
        InvalidEvent
            ``label_unmatched`` (no prediction for that id was seen), ``label_duplicate``
            (its label was joined already) or ``label_late`` (its prediction expired).
        """
        self._delayed()
        kept = self._pending.pop(event_id, None)
        if kept is None:
            if event_id in self._joined:
                outcome, why = "duplicate", "was joined already"
            elif event_id in self._expired:
                outcome, why = "late", "expired before its label came"
            else:
                outcome, why = "unmatched", "was never seen by this shard"
            # Not counted here: the learner is untouched, and the worker counts the dead letter.
            raise InvalidEvent(f"label_{outcome}", f"the prediction for event {event_id!r} {why}")
        if len(kept) > 4:
            x, y_pred, proba, predicted_ms, window, confidence = kept
        else:  # kept before the estimate: in no window; calibrates with kept probabilities
            x, y_pred, proba, predicted_ms = kept
            window, confidence = None, _confidence(y_pred, proba)
        estimate = self._estimate
        if estimate is not None:
            estimate.labelled(window, confidence, y_pred == label)
        self.last_offset = offset
        if self._holdout_metrics and in_holdout(event_id, self.spec.holdout):
            self._score_holdout(label, y_pred, proba)
        else:
            self._learn(x, label, y_pred, proba, offset)
        self._forget(self._joined, event_id)
        self.label_counts["joined"] += 1
        delay: float = max(0.0, (ts_ms - predicted_ms) / 1000)
        return delay

    @property
    def events_only_scored(self) -> int:
        """Events scored and not learned with it: without a label, or (delayed labels)
        awaiting theirs; a joined label counts as learned, not again as scored."""
        joined: int = getattr(self, "label_counts", {}).get("joined", 0)
        return self.events_scored - self.events_learned + joined

    @property
    def alarms(self) -> dict[str, int]:
        """Label-free alarms raised so far, by signal (empty without a monitor)."""
        monitor = getattr(self, "_monitor", None)
        return {} if monitor is None else dict(monitor.alarms)

    @property
    def alarm_seq(self) -> int:
        """Label-free alarms raised so far, all signals (0 without a monitor)."""
        monitor = getattr(self, "_monitor", None)
        return 0 if monitor is None else monitor.alarm_seq

    @property
    def pending_labels(self) -> int:
        """Predictions awaiting their label."""
        return len(self._pending)

    def _delayed(self) -> DelayedLabels:
        delayed: DelayedLabels | None = getattr(self.spec, "delayed_labels", None)
        if delayed is None:
            raise TypeError(f"model {self.spec.name!r} takes its labels with its features")
        return delayed

    def _forget(self, recent: dict[str, None], event_id: str) -> None:
        """Remember ``event_id`` in a bounded record (to tell a late label from a stray)."""
        recent[event_id] = None
        if len(recent) > self._delayed().max_pending:
            del recent[next(iter(recent))]

    def _scored(
        self,
        features: Mapping[str, Any],
        x: Mapping[str, Any],
        offset: int,
        ts_ms: int | None,
        scoring: bool = True,
    ) -> tuple[Any, Any]:
        """Predict for ``x`` (the selected ``features``), count the event as scored and
        show it to the monitor; the predicted label and the probabilities (None when not
        ``scoring``: only the label is predicted)."""
        y_pred, proba = self._predict(x) if scoring else (self._model.predict_one(x), None)
        self.events_scored += 1
        self.last_offset = offset
        if self._monitor is not None:
            self._monitor.observe(features, y_pred, offset, ts_ms)
        return y_pred, proba

    def _predict(self, x: Mapping[str, Any]) -> tuple[Any, Any]:
        """The predicted label and, when a metric scores probabilities or the accuracy is
        estimated, the probabilities."""
        model = self._model
        if self._proba_metrics or self._estimate is not None:
            proba = model.predict_proba_one(x)
            if not self._label_from_proba:
                return model.predict_one(x), proba
            return (max(proba, key=proba.get) if proba else None), proba
        return model.predict_one(x), None

    def _learn(
        self, x: Mapping[str, Any], label: Any, y_pred: Any, proba: Any, offset: int
    ) -> None:
        """Score ``y_pred``/``proba`` against ``label``, watch drift, then learn ``x``."""
        evaluated = False
        if y_pred is not None:
            for metric in self._label_metrics:
                metric.update(label, y_pred)
            window = self._label_window
            window.append((label, y_pred))
            if len(window) > self._window_cap:
                self._forget_rolled(window)
            evaluated = True
            detector = self._detector
            if detector is not None:
                if not self._classifier:
                    error = abs(label - y_pred)
                    detector.update(error)
                elif self._binary_detector:
                    error = y_pred != label
                    detector.update(error)
                else:
                    error = 0.0 if y_pred == label else 1.0
                    detector.update(error)
                errors = self._drift_errors
                if errors is None:
                    if detector.drift_detected:
                        self.drift_detections += 1
                        self.drift_offsets.append(offset)
                else:
                    errors[0] += 1
                    errors[1] += error
                    errors[2] += error * error
                    if self._drift_pending is not None and errors[0] >= _DRIFT_CONFIRM_EVENTS:
                        self._confirm_drift()
                    if detector.drift_detected:
                        self._cut(detector, errors, offset)
        if proba and self._proba_metrics:
            for metric in self._proba_metrics:
                metric.update(label, proba)
            window = self._proba_window
            window.append((label, proba))
            if len(window) > self._window_cap:
                self._forget_rolled(window)
            evaluated = True
        if evaluated:
            self._evaluated += 1
        self._model.learn_one(x, label)
        self.events_learned += 1

    def _cut(self, detector: Any, errors: list[float], offset: int) -> None:
        """ADWIN cut its window at ``offset``: when the error mean of the part it keeps is
        above that of the part it drops (a rise: a model that gets better is no drift to
        page about), the detection awaits confirmation. ``errors`` held the whole window
        before the cut; it starts afresh, as River's detector does after a detection."""
        if self._drift_pending is not None:
            self._confirm_drift()  # on what came since: a new cut ends its wait
        kept_n, kept_sum = detector.width, detector.total
        dropped_n, dropped_sum = errors[0] - kept_n, errors[1] - kept_sum
        errors[:] = [0, 0.0, 0.0]
        if kept_n > 0 and dropped_n > 0 and kept_sum / kept_n > dropped_sum / dropped_n:
            self._drift_pending = (dropped_n, dropped_sum / dropped_n, offset)

    def _confirm_drift(self) -> None:
        """Count the pending detection if the errors since it (fresh data: the cut chose
        where the difference looked largest, so its own parts overstate it) are above the
        dropped part's mean by a one-sided z-test at ``_DRIFT_CONFIRM_Z``: a sustained rise
        is drift, a passing fluctuation that ADWIN caught is not."""
        assert self._drift_pending is not None and self._drift_errors is not None
        dropped_n, dropped_mean, offset = self._drift_pending
        self._drift_pending = None
        n, total, squares = self._drift_errors
        if n < 2:
            return
        mean = total / n
        spread = max(0.0, squares / n - mean * mean) * (1 / n + 1 / dropped_n)
        rise = mean - dropped_mean
        if rise > 0 and (spread == 0.0 or rise / math.sqrt(spread) > _DRIFT_CONFIRM_Z):
            self.drift_detections += 1
            self.drift_offsets.append(offset)

    def predict_one(self, x: Mapping[str, Any]) -> Any:
        """Return the model's prediction for features ``x`` (feature selection applied)."""
        if self._select is not None:
            x = self._select.select_features(x)
        return self._model.predict_one(x)

    def predict_proba_one(self, x: Mapping[str, Any]) -> dict[Any, float]:
        """Return class probabilities for features ``x`` (feature selection applied).

        Raises
        ------
        TypeError
            The task is regression.

        """
        if not self._classifier:
            raise TypeError(f"model {self.spec.name!r} is a regression: it has no probabilities")
        if self._select is not None:
            x = self._select.select_features(x)
        proba: dict[Any, float] = self._model.predict_proba_one(x)
        return proba

    def _forget_rolled(self, window: collections.deque[tuple[Any, Any]]) -> None:
        """A window doubled since the rolled metrics were read: keep its last inputs only,
        and rebuild the metrics from them when next read (as many inputs as changed)."""
        _keep_last(window, self.spec.rolling_window)
        self._rolled = None

    def _rolling_metrics(self) -> list[Any]:
        """The metrics over the last ``rolling_window`` inputs, in the spec's order."""
        size = self.spec.rolling_window
        windows = (self._label_window, self._proba_window)
        rolled: list[Any] | None = self._rolled
        if rolled is not None:
            try:
                for metric, wants_proba in zip(rolled, self._wants_proba, strict=True):
                    window = windows[wants_proba]
                    applied = self._rolled_inputs[wants_proba]
                    for y_true, y_pred in itertools.islice(window, applied, None):
                        metric.update(y_true, y_pred)
                    for y_true, y_pred in itertools.islice(window, max(0, len(window) - size)):
                        metric.revert(y_true, y_pred)
            except Exception:  # a metric River cannot revert (or fails to): rebuilt each read
                rolled = None
            else:
                for window in windows:
                    _keep_last(window, size)
                self._rolled_inputs = (len(windows[0]), len(windows[1]))
                return rolled
        fresh = self.spec.build_metrics()
        for window in windows:
            _keep_last(window, size)
        for metric, wants_proba in zip(fresh, self._wants_proba, strict=True):
            for y_true, y_pred in windows[wants_proba]:
                metric.update(y_true, y_pred)
        if windows[0].maxlen is not None:  # a learner pickled with bounded windows
            self._label_window = collections.deque(self._label_window)
            self._proba_window = collections.deque(self._proba_window)
        self._window_cap = 2 * size
        self._rolled, self._rolled_inputs = fresh, (len(windows[0]), len(windows[1]))
        return fresh

    def stats(self) -> dict[str, Any]:
        """Return counts, metrics and drift state as JSON-serialisable data.

        Metric values are floats, or None while undefined (no labelled event scored yet, or
        a non-finite value). Keys of ``metrics`` and ``rolling_metrics`` follow the spec's
        ``metrics`` order, the primary metric first.
        """
        scored = self._evaluated > 0
        return {
            "task": self.spec.task,
            "events_learned": self.events_learned,
            "events_scored": self.events_scored,
            "metrics": {
                name: _metric_value(metric.get()) if scored else None
                for name, metric in zip(self._names, self._metrics, strict=True)
            },
            "rolling_metrics": {
                name: _metric_value(rolling.get()) if scored else None
                for name, rolling in zip(self._names, self._rolling_metrics(), strict=True)
            },
            "drift_detections": self.drift_detections,
            "drift_offsets": list(self.drift_offsets),
            **({"holdout": self._holdout_stats()} if self._holdout_metrics else {}),
            **(
                {"monitor": monitor.stats()}
                if (monitor := getattr(self, "_monitor", None)) is not None
                else {}
            ),
            **(
                {"labels": {**self.label_counts, "pending": len(self._pending)}}
                if getattr(self.spec, "delayed_labels", None) is not None
                else {}
            ),
            **({"estimate": self._estimate.stats()} if self._estimate is not None else {}),
        }

    def _holdout_stats(self) -> dict[str, Any]:
        """The holdout's metrics, and each one's gap to the progressive metric, signed so
        that a positive gap means the progressive figure looks better than the holdout's."""
        values = {
            name: _metric_value(metric.get()) if self.holdout_scored else None
            for name, metric in zip(self._names, self._holdout_metrics, strict=True)
        }
        gaps: dict[str, float | None] = {}
        for name, metric, held in zip(
            self._names, self._metrics, self._holdout_metrics, strict=True
        ):
            progressive = _metric_value(metric.get()) if self._evaluated else None
            holdout = values[name]
            if progressive is None or holdout is None:
                gaps[name] = None
            else:
                gap = progressive - holdout
                gaps[name] = gap if held.bigger_is_better else -gap
        return {"events": self.holdout_scored, "metrics": values, "gap": gaps}


def _confidence(y_pred: Any, proba: Any) -> float | None:
    """The probability the model gave the class it predicted; None when it predicted
    none, or gave no probability for that class (the estimate skips one outside [0, 1]).

    >>> _confidence(True, {True: 0.8, False: 0.2}), _confidence(None, {})
    (0.8, None)
    """
    confidence: float | None = proba.get(y_pred) if proba else None
    return confidence


def _estimate_for(spec: ModelSpec) -> AccuracyEstimate | None:
    """The accuracy estimate of a classifier with delayed labels, in the monitor's windows
    (its default size when the monitor is off); None for any other model."""
    if spec.task == "regression" or getattr(spec, "delayed_labels", None) is None:
        return None
    monitor = getattr(spec, "monitor", None) or MonitorSpec()
    return AccuracyEstimate(monitor.window)


def _keep_last(window: collections.deque[tuple[Any, Any]], size: int) -> None:
    """Drop the oldest inputs of ``window`` beyond its last ``size``."""
    for _ in range(len(window) - size):
        window.popleft()


def _error_window(detector: Any) -> list[float] | None:
    """The count, sum and sum of squares of the errors in a detector's window, kept beside
    it so that a detection counts only when the error rose (`Learner._cut`); None for a
    detector that does not show its window (counted as it detects: give PageHinkley
    ``mode="up"``, DDM and its kin watch rises only)."""
    if hasattr(detector, "width") and hasattr(detector, "total"):
        return [0, 0.0, 0.0]
    return None


def load_learner(
    codec: SnapshotCodec,
    blob: bytes,
    expect: Binding | None = None,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    pause_seconds: float = 0.0,
) -> Learner:
    """Return the learner in a signed snapshot, verified (and its binding compared with
    ``expect``, for a snapshot read from a store) before it is unpickled.

    ``pause_seconds`` is passed to ``SnapshotCodec.decode``: a pause between the pickle's
    frames, for a load in a background thread that must not hold other threads up.

    Raises
    ------
    SnapshotError
        The blob is refused (``SnapshotRefused``: tampered, unsigned, or signed but not
        holding a ``Learner``) or cannot be loaded here (``SnapshotIncompatible``).

    """
    learner = codec.decode(blob, expect, check, pause_seconds)
    if not isinstance(learner, Learner):
        raise SnapshotRefused(f"the snapshot holds a {type(learner).__name__}, not a Learner")
    return learner
