"""Model specs: configuration that names a River pipeline, its metrics and its drift detector.

A spec is checked when it is loaded, so a bad spec fails at settings load and not on the first
event: every class name must resolve inside the ``river`` package (see ``_river_names``), the
pipeline must build with its params and fit the task, and every metric must exist in
``river.metrics`` and fit the task.

Every problem is reported at the exact setting it concerns. :meth:`ModelSpec.from_config` raises
:class:`~learners.SpecError` with full paths such as ``models[0].pipeline[1].class``. Direct
pydantic validation (``ModelSpec(...)``, ``model_validate``, or a spec nested in a settings model
as ``models: list[ModelSpec]``) raises pydantic's ``ValidationError``, also a ``ValueError``,
whose entries carry the same paths (``("models", 0, "pipeline", 1, "class")``) and messages
(error type ``"spec"``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
import re
import reprlib
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from river import base, compose
from river import metrics as river_metrics

from livelearn.errors import SpecError
from livelearn.learners._river_names import canonical_name, resolve_class
from livelearn.learners.monitor import MonitorSpec

__all__ = [
    "CheckpointPolicy",
    "ModelSpec",
    "RiverRef",
    "SanitizeRule",
    "StartPosition",
    "Task",
]

Task = Literal["binary", "multiclass", "regression"]
# Where a shard with no checkpoint starts reading: the partition's first event, its end,
# or the first event at or after a time (timezone-aware).
StartPosition: TypeAlias = Literal["earliest", "latest"] | datetime

# Cheap defaults: ROCAUC keeps ten confusion matrices and costs more per event than LogLoss.
DEFAULT_METRICS: Mapping[str, tuple[str, ...]] = {
    "binary": ("Accuracy", "LogLoss"),
    "multiclass": ("Accuracy",),
    "regression": ("MAE", "RMSE"),
}

Loc = tuple[int | str, ...]  # a pydantic error location, e.g. ("pipeline", 1, "class")

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def _join(prefix: str, loc: str) -> str:
    """Join two setting paths.

    Examples
    --------
    >>> _join("models[0]", "pipeline[1].class")
    'models[0].pipeline[1].class'
    >>> _join("params.optimizer", "[2]")
    'params.optimizer[2]'
    >>> _join("", "topics")
    'topics'

    """
    if not prefix:
        return loc
    if not loc:
        return prefix
    return prefix + loc if loc.startswith("[") else f"{prefix}.{loc}"


def _loc_text(parts: Sequence[int | str]) -> str:
    """Render a pydantic error location as a setting path.

    Examples
    --------
    >>> _loc_text(("pipeline", 1, "class"))
    'pipeline[1].class'

    """
    text = ""
    for part in parts:
        text = _join(text, f"[{part}]" if isinstance(part, int) else str(part))
    return text


def _invalid(title: str, loc: Loc, problem: str, value: Any) -> ValidationError:
    """A pydantic error of type ``"spec"`` at ``loc``, relative to the validated field or model.

    Pydantic prefixes the location of an error raised inside a validator, so a problem found
    by a model-level check still points at its setting, nested specs included.
    """
    error = PydanticCustomError("spec", "{problem}", {"problem": problem})
    return ValidationError.from_exception_data(
        title, [InitErrorDetails(type=error, loc=loc, input=value)]
    )


def _prefixed(title: str, exc: ValidationError, prefix: Loc) -> ValidationError:
    """Re-raise the errors of a nested validation under ``prefix``."""
    details: list[InitErrorDetails] = []
    for err in exc.errors():
        kind: str | PydanticCustomError = err["type"]
        ctx = err.get("ctx")
        if kind == "spec" and ctx is not None:
            kind = PydanticCustomError("spec", "{problem}", ctx)
        detail = InitErrorDetails(type=kind, loc=(*prefix, *err["loc"]), input=err["input"])
        if ctx is not None:
            detail["ctx"] = ctx
        details.append(detail)
    return ValidationError.from_exception_data(title, details)


def _spec_error(exc: ValidationError, prefix: str) -> SpecError:
    """Turn a pydantic ``ValidationError`` into one ``SpecError`` naming every problem."""
    found: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = _join(prefix, _loc_text(err["loc"]))
        if err["type"] == "spec":
            found.append((loc, err["msg"]))
        elif err["type"] == "missing":
            found.append((loc, "is required"))
        elif err["type"] == "extra_forbidden":
            found.append((loc, "is not a known setting; check its spelling and indentation"))
        elif err["type"] == "value_error":
            found.append((loc, err["msg"].removeprefix("Value error, ")))
        else:
            found.append((loc, f"{err['msg']}, got {_short.repr(err['input'])}"))
    return SpecError(*found[0], *found[1:])


class _Spec(BaseModel):
    """Frozen, closed pydantic model."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- River class references -------------------------------------------------------------------


def _nest(value: Any, loc: Loc) -> Any:
    """Turn mappings with a ``"class"`` key (also inside lists) into ``RiverRef`` objects."""
    if isinstance(value, Mapping) and "class" in value:
        try:
            return RiverRef.model_validate(dict(value))
        except ValidationError as exc:
            raise _prefixed("RiverRef", exc, loc) from None
    if isinstance(value, list | tuple):
        return [_nest(item, (*loc, i)) for i, item in enumerate(value)]
    return value


def _build_value(value: Any) -> Any:
    """Instantiate nested references; copy plain values so no two models share state."""
    if isinstance(value, RiverRef):
        return value.build()
    if isinstance(value, list):
        return [_build_value(item) for item in value]
    return copy.deepcopy(value)


class RiverRef(_Spec):
    """A River class and its constructor params, e.g. ``{"class": "optim.SGD", "params": {...}}``.

    A param value that is itself a mapping with a ``"class"`` key is a nested reference, built
    recursively. The class name is stored relative to ``river``.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True
    )

    class_: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("class_")
    @classmethod
    def _resolve(cls, value: str) -> str:
        try:
            resolve_class(value)
        except SpecError as exc:
            raise _invalid("RiverRef", (), exc.problem, value) from None
        return canonical_name(value)

    @field_validator("params")
    @classmethod
    def _nest_refs(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {key: _nest(value, (key,)) for key, value in params.items()}

    @model_validator(mode="after")
    def _builds(self) -> RiverRef:
        try:
            self.build()
        except Exception as exc:
            problem = (
                f"{self.class_} refused params {_short.repr(self.params)}: "
                f"{type(exc).__name__}: {exc}"
            )
            raise _invalid("RiverRef", ("params",), problem, self.params) from None
        return self

    def resolve(self) -> type:
        """Return the River class."""
        return resolve_class(self.class_)

    def build(self) -> Any:
        """Return a fresh instance of the class with its params (nested references built)."""
        cls = resolve_class(self.class_)
        return cls(**{key: _build_value(value) for key, value in self.params.items()})


# --- Small settings ---------------------------------------------------------------------------


class SanitizeRule(_Spec):
    """Drop a sensitive feature, or replace it by a keyed hash (see ``learners.Sanitizer``)."""

    field: str = Field(min_length=1)
    action: Literal["drop", "hash"]


class CheckpointPolicy(_Spec):
    """Checkpoint a shard after ``every_events`` learned events or ``every_seconds``, whichever
    comes first."""

    # Time bounds freshness and, with the count, the work redone after a crash; the
    # count keeps snapshot cost a small share of learning time even for trees at their
    # full rate. `make bench` measures both: freshness in bench/bench_api.py, throughput
    # at this cadence in bench/bench_worker.py.
    every_events: int = Field(default=10_000, gt=0)
    every_seconds: float = Field(default=1.0, gt=0)


class DelayedLabels(_Spec):
    """Labels that come after the prediction, in label-only events joined by event id.

    An event with features and no label is scored and its prediction kept; a label-only
    event (the id and the label, no features) joins it: the metrics compare the prediction
    made at prediction time with the label, and the model learns the features it predicted
    on. Pending predictions are bounded by count and by age (in event time, so a replay
    expires the same ones); an expired one is counted, its late label dead-lettered.

    Label-only events come on the model's own topic, keyed like the events they label, or
    on a separate ``topic``: the worker then forwards each one to the model's topic, keyed
    alike, in a Kafka transaction with its consumed offset, so that it meets its
    prediction in the same shard exactly once (stream/label_router.py).
    """

    max_pending: int = Field(default=100_000, gt=0)
    max_age_s: float = Field(default=7 * 86_400.0, gt=0)
    topic: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,249}$")


# --- Metrics ----------------------------------------------------------------------------------


def _metric_fits(cls: type, task: str) -> bool:
    if task == "regression":
        return issubclass(cls, river_metrics.base.RegressionMetric)
    if not issubclass(cls, river_metrics.base.ClassificationMetric):
        return False
    # Binary metrics (F1, LogLoss, ROCAUC, ...) score a positive class: meaningless on many.
    return task == "binary" or not issubclass(cls, river_metrics.base.BinaryMetric)


def _metric_usable(cls: type) -> bool:
    """A metric must build without arguments and report a number (not ConfusionMatrix)."""
    try:
        return isinstance(cls().get(), numbers.Real)
    except Exception:
        return False


@functools.cache
def allowed_metrics(task: str) -> tuple[str, ...]:
    """Names in ``river.metrics`` that fit ``task``.

    Examples
    --------
    >>> "MAE" in allowed_metrics("regression"), "LogLoss" in allowed_metrics("multiclass")
    (True, False)

    """
    return tuple(
        name
        for name, obj in sorted(vars(river_metrics).items())
        if not name.startswith("_")
        and inspect.isclass(obj)
        and issubclass(obj, river_metrics.base.Metric)
        and _metric_fits(obj, task)
        and _metric_usable(obj)
    )


def _metric_class(name: str, task: str) -> type:
    allowed = ", ".join(allowed_metrics(task))
    try:
        cls = resolve_class(f"metrics.{name}") if "." not in name else None
    except SpecError:
        cls = None
    if cls is None or not issubclass(cls, river_metrics.base.Metric):
        raise SpecError("", f"{name!r} is not a metric of river.metrics; for {task} use {allowed}")
    if not (_metric_fits(cls, task) and _metric_usable(cls)):
        raise SpecError("", f"{name!r} does not fit a {task} task; use one of {allowed}")
    return cls


# --- The model spec ---------------------------------------------------------------------------


class ModelSpec(_Spec):
    """One model: the topics it learns from, its River pipeline, metrics and drift detector."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    topics: list[str]
    task: Task
    pipeline: list[RiverRef]
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    label: str = "label"
    metrics: list[str] = Field(default_factory=list)
    rolling_window: int = Field(default=1000, gt=0)
    drift: RiverRef | None = RiverRef.model_validate({"class": "drift.ADWIN"})
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    sanitize: list[SanitizeRule] = Field(default_factory=list)
    # Learn from labels that arrive later, in label-only events (None: labels come with
    # their features).
    delayed_labels: DelayedLabels | None = None
    # A share of labelled events, chosen by a hash of the event id, that is scored into
    # separate holdout metrics and never learned: the gap between progressive and holdout
    # quality shows a model that looks better than it is (see Learner.score_holdout).
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Label-free signals (prediction and feature drift, unseen categories, null
    # predictions): see learners/monitor.py; None turns them off. Not part of the
    # fingerprint: they watch the model, they do not change what it learns.
    monitor: MonitorSpec | None = MonitorSpec()
    # Serve each prediction from the shard of the event's key (Kafka's default partitioner
    # maps a key to its partition) instead of combining every shard.
    route_by_key: bool = False
    # Where a new shard (one with no checkpoint) starts: "earliest", "latest", or the first
    # event at or after an ISO-8601 time; None follows kafka.auto_offset_reset. A shard
    # with a checkpoint always resumes from it, so this never moves a running model.
    start: StartPosition | None = None

    _include: frozenset[str] | None = PrivateAttr(default=None)
    _exclude: frozenset[str] = PrivateAttr(default=frozenset())

    @classmethod
    def from_config(cls, data: Mapping[str, Any], *, loc: str = "") -> ModelSpec:
        """Validate a spec read from configuration.

        Parameters
        ----------
        data
            The spec as a mapping, e.g. from a YAML file.
        loc
            Where the spec sits, prefixed to error paths: ``"models[0]"`` or a file name.

        Raises
        ------
        SpecError
            Naming the setting path (``models[0].pipeline[1].class``), the value and what is
            allowed; further problems follow on extra lines.

        """
        if not isinstance(data, Mapping):
            raise SpecError(loc, f"a model spec is a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise _spec_error(exc, loc) from None

    @model_validator(mode="before")
    @classmethod
    def _default_metrics(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("metrics") is None:
            task = data.get("task")
            if isinstance(task, str) and task in DEFAULT_METRICS:
                return {**data, "metrics": list(DEFAULT_METRICS[task])}
        return data

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, topics: list[str], info: ValidationInfo) -> list[str]:
        if not topics:
            name = info.data.get("name", "?")
            problem = f"model {name!r} has no topic: list at least one Kafka topic to learn from"
            raise _invalid("ModelSpec", (), problem, topics)
        for i, topic in enumerate(topics):
            if not _TOPIC_RE.match(topic):
                problem = f"{topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-')"
                raise _invalid("ModelSpec", (i,), problem, topic)
        return topics

    @field_validator("start", mode="before")
    @classmethod
    def _parse_start(cls, value: Any) -> Any:
        if value is None or value in ("earliest", "latest"):
            return value
        when = value
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.strip())
            except ValueError:
                when = None
        elif isinstance(value, date) and not isinstance(value, datetime):
            when = None  # a day alone: which time of it, in which zone?
        if not isinstance(when, datetime):
            problem = (
                f"{_short.repr(value)} is not a start position: use earliest, latest or an "
                "ISO-8601 time with its timezone, e.g. 2026-11-26T10:00:00Z"
            )
            raise _invalid("ModelSpec", (), problem, value)
        if when.tzinfo is None or when.utcoffset() is None:
            problem = (
                f"{_short.repr(value)} has no timezone: write it as e.g. "
                "2026-11-26T10:00:00Z or 2026-11-26T11:00:00+01:00"
            )
            raise _invalid("ModelSpec", (), problem, value)
        return when

    @field_validator("pipeline")
    @classmethod
    def _check_pipeline_length(cls, pipeline: list[RiverRef]) -> list[RiverRef]:
        if not pipeline:
            problem = (
                "the pipeline is empty: list its steps, the model last, e.g. "
                "[{class: preprocessing.StandardScaler}, {class: linear_model.LogisticRegression}]"
            )
            raise _invalid("ModelSpec", (), problem, pipeline)
        return pipeline

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        self._check_steps()
        self._check_metrics()
        self._check_drift()
        self._check_label_topic()
        seen: set[str] = set()
        for i, rule in enumerate(self.sanitize):
            if rule.field in seen:
                problem = f"{rule.field!r} has more than one sanitize rule"
                raise _invalid("ModelSpec", ("sanitize", i, "field"), problem, rule.field)
            seen.add(rule.field)
        return self

    def _check_label_topic(self) -> None:
        topic = self.delayed_labels.topic if self.delayed_labels is not None else None
        if topic is None:
            return
        loc = ("delayed_labels", "topic")
        if topic in self.topics:
            problem = (
                f"{topic!r} is the model's own topic: label-only events there need no "
                "forwarding; remove delayed_labels.topic"
            )
            raise _invalid("ModelSpec", loc, problem, topic)
        if len(self.topics) != 1:
            problem = (
                "labels from a separate topic are forwarded to the model's topic, so the "
                f"model must learn from one topic, not {len(self.topics)}: split it into one "
                "model per topic"
            )
            raise _invalid("ModelSpec", loc, problem, topic)

    def model_post_init(self, context: Any, /) -> None:
        """Precompute the feature sets used by ``select_features``."""
        self._include = None if self.include is None else frozenset(self.include)
        self._exclude = frozenset(self.exclude)

    def _check_steps(self) -> None:
        steps = [ref.build() for ref in self.pipeline]
        names = [ref.class_ for ref in self.pipeline]

        def fail(i: int, problem: str) -> ValidationError:
            return _invalid("ModelSpec", ("pipeline", i, "class"), problem, names[i])

        for i, step in enumerate(steps[:-1]):
            if not isinstance(step, base.Transformer | base.AnomalyFilter):
                raise fail(i, f"{names[i]} is not a transformer; only the last step may be a model")
        last, final = len(steps) - 1, steps[-1]
        if self.task == "regression":
            if not isinstance(final, base.Regressor):
                raise fail(last, f"{names[last]} is not a regressor, the task is regression")
            return
        from river.active.base import ActiveLearningClassifier

        if not isinstance(final, base.Classifier) or isinstance(final, ActiveLearningClassifier):
            raise fail(last, f"{names[last]} is not a classifier, the task is {self.task}")
        if self.task == "multiclass" and not getattr(final, "_multiclass", False):
            raise fail(
                last,
                f"{names[last]} handles two classes only, the task is multiclass; wrap it in "
                "multiclass.OneVsRestClassifier or pick a multiclass model",
            )

    def _check_metrics(self) -> None:
        if not self.metrics:
            allowed = ", ".join(allowed_metrics(self.task))
            problem = f"list at least one metric; for {self.task}: {allowed}"
            raise _invalid("ModelSpec", ("metrics",), problem, self.metrics)
        for i, metric in enumerate(self.metrics):
            try:
                _metric_class(metric, self.task)
            except SpecError as exc:
                raise _invalid("ModelSpec", ("metrics", i), exc.problem, metric) from None
            if metric in self.metrics[:i]:
                raise _invalid("ModelSpec", ("metrics", i), f"{metric!r} is listed twice", metric)

    def _check_drift(self) -> None:
        if self.drift is None:
            return
        cls, name = self.drift.resolve(), self.drift.class_
        if not issubclass(cls, base.DriftDetector | base.BinaryDriftDetector):
            problem = f"{name} is not a drift detector, e.g. drift.ADWIN"
            raise _invalid("ModelSpec", ("drift", "class"), problem, name)
        if self.task == "regression" and issubclass(cls, base.BinaryDriftDetector):
            problem = (
                f"{name} watches booleans; a regression feeds absolute errors, "
                "use drift.ADWIN, drift.PageHinkley or drift.KSWIN"
            )
            raise _invalid("ModelSpec", ("drift", "class"), problem, name)

    # --- builders -----------------------------------------------------------------------------

    def build_pipeline(self) -> base.Estimator:
        """Return a fresh, untrained model: the steps composed as a ``compose.Pipeline``.

        A one-step pipeline returns the estimator itself.
        """
        steps = [ref.build() for ref in self.pipeline]
        return steps[0] if len(steps) == 1 else compose.Pipeline(*steps)

    def build_metrics(self) -> list[river_metrics.base.Metric]:
        """Return fresh metrics in the order of ``metrics`` (the first is the primary one)."""
        return [_metric_class(name, self.task)() for name in self.metrics]

    def build_drift(self) -> base.DriftDetector | base.BinaryDriftDetector | None:
        """Return a fresh drift detector, or None when drift detection is off."""
        return None if self.drift is None else self.drift.build()

    def select_features(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """Return a new dict with the features kept by ``include`` and ``exclude``, in order.

        Examples
        --------
        >>> spec = ModelSpec(
        ...     name="m", topics=["t"], task="binary", exclude=["b"],
        ...     pipeline=[{"class": "linear_model.LogisticRegression"}],
        ... )
        >>> spec.select_features({"c": 3, "b": 2, "a": 1})
        {'c': 3, 'a': 1}

        """
        include, exclude = self._include, self._exclude
        if include is None:
            return {k: v for k, v in features.items() if k not in exclude}
        return {k: v for k, v in features.items() if k in include and k not in exclude}
