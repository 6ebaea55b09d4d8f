"""One shard's model, trained test-then-train on that shard's events in offset order."""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import Any

from river import base, compose

from learners.snapshot import SnapshotCodec
from learners.spec import ModelSpec
from livelearn.errors import SnapshotRefused

__all__ = ["Learner", "load_learner"]

# Enough history to line drift detections up with a dashboard without growing the snapshot.
_DRIFT_OFFSETS_KEPT = 100


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
        self._select = spec if spec.include is not None or spec.exclude else None
        self.events_learned = 0
        self.events_scored = 0
        self.drift_detections = 0
        self.drift_offsets: collections.deque[int] = collections.deque(maxlen=_DRIFT_OFFSETS_KEPT)
        self.last_offset: int | None = None

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
        # Rolling metrics are computed when read, from the last ``rolling_window`` inputs
        # each kind of metric was given: appending to a deque is far cheaper per event than
        # river.utils.Rolling's update-and-revert, and the values are the same
        # (bench/bench_worker.py measures what the worker adds to River's own loop).
        self._label_window: collections.deque[tuple[Any, Any]] = collections.deque(
            maxlen=self.spec.rolling_window
        )
        self._proba_window: collections.deque[tuple[Any, Any]] = collections.deque(
            maxlen=self.spec.rolling_window
        )
        self._evaluated = 0

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

    def process(self, features: Mapping[str, Any], label: Any | None, offset: int) -> Any:
        """Predict, then, when ``label`` is given, score the prediction, watch drift and learn.

        Parameters
        ----------
        features
            The event's (sanitized) features; never modified.
        label
            The true label, or None for an event that is only scored.
        offset
            The event's offset, recorded as ``last_offset`` and in ``drift_offsets``.

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
        model = self._model
        if label is None:
            y_pred = model.predict_one(x)
            self.events_scored += 1
            self.last_offset = offset
            return y_pred

        proba: Any = None
        if self._proba_metrics:
            proba = model.predict_proba_one(x)
            if not self._label_from_proba:
                y_pred = model.predict_one(x)
            else:
                y_pred = max(proba, key=proba.get) if proba else None
        else:
            y_pred = model.predict_one(x)
        self.events_scored += 1
        self.last_offset = offset

        evaluated = False
        if y_pred is not None:
            for metric in self._label_metrics:
                metric.update(label, y_pred)
            self._label_window.append((label, y_pred))
            evaluated = True
            detector = self._detector
            if detector is not None:
                if not self._classifier:
                    detector.update(abs(label - y_pred))
                elif self._binary_detector:
                    detector.update(y_pred != label)
                else:
                    detector.update(0.0 if y_pred == label else 1.0)
                if detector.drift_detected:
                    self.drift_detections += 1
                    self.drift_offsets.append(offset)
        if proba:
            for metric in self._proba_metrics:
                metric.update(label, proba)
            self._proba_window.append((label, proba))
            evaluated = True
        if evaluated:
            self._evaluated += 1

        model.learn_one(x, label)
        self.events_learned += 1
        return y_pred

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

    def _rolling_metrics(self) -> list[Any]:
        """Fresh metrics fed the rolling window, in the spec's order."""
        fresh = self.spec.build_metrics()
        for metric, wants_proba in zip(fresh, self._wants_proba, strict=True):
            for y_true, y_pred in self._proba_window if wants_proba else self._label_window:
                metric.update(y_true, y_pred)
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
        }


def load_learner(codec: SnapshotCodec, blob: bytes) -> Learner:
    """Return the learner in a signed snapshot, verified before it is unpickled.

    Raises
    ------
    SnapshotError
        The blob is refused (``SnapshotRefused``: tampered, unsigned, or signed but not
        holding a ``Learner``) or cannot be loaded here (``SnapshotIncompatible``).

    """
    learner = codec.decode(blob)
    if not isinstance(learner, Learner):
        raise SnapshotRefused(f"the snapshot holds a {type(learner).__name__}, not a Learner")
    return learner
