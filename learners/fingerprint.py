"""A model spec's fingerprint: what the model learns and how, as one SHA-256.

A checkpointed learner carries the spec it was built from. The worker compares that
spec's fingerprint with the configured one's before it resumes a shard, so a changed
pipeline, feature list, label, metric, window, drift detector or sanitize rule is never
silently ignored. The checkpoint cadence, the topics (``delayed_labels.topic`` included),
``route_by_key`` and ``start`` (where a shard with no checkpoint begins) do not change what
a shard learns from its checkpoint, so they are left out: changing them resumes the shards
as they are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from livelearn.learners.spec import ModelSpec

__all__ = ["LEARNING_FIELDS", "spec_changes", "spec_fingerprint"]

# The fields that change what or how a shard learns, in the order a message names them.
LEARNING_FIELDS: tuple[str, ...] = (
    "task",
    "pipeline",
    "include",
    "exclude",
    "label",
    "metrics",
    "rolling_window",
    "drift",
    "sanitize",
    "delayed_labels",
    "holdout",
)


def _canonical(spec: ModelSpec) -> dict[str, Any]:
    """The learning fields as JSON values; lists that act as sets are sorted."""
    data = spec.model_dump(mode="json", include=set(LEARNING_FIELDS))
    if data["include"] is not None:
        data["include"] = sorted(data["include"])
    data["exclude"] = sorted(data["exclude"])
    data["sanitize"] = sorted(data["sanitize"], key=lambda rule: rule["field"])
    # Fields added later count only when set: an upgrade keeps older specs' fingerprints
    # (and a learner pickled before the field existed has no value for it).
    for name, unset in (("delayed_labels", None), ("holdout", 0.0)):
        if data.get(name, unset) == unset:
            data.pop(name, None)
    if data.get("delayed_labels") is not None:
        data["delayed_labels"].pop("topic", None)  # where labels come from, like topics
    return data


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_fingerprint(spec: ModelSpec) -> str:
    """SHA-256 hex of the canonical JSON of the spec's learning fields.

    The order of ``include``, ``exclude`` and ``sanitize`` does not count; the order of
    ``metrics`` does (the first is the primary metric).

    Examples
    --------
    >>> spec = ModelSpec(
    ...     name="m", topics=["t"], task="binary", include=["a", "b"],
    ...     pipeline=[{"class": "linear_model.LogisticRegression"}],
    ... )
    >>> len(spec_fingerprint(spec))
    64
    >>> moved = spec.model_copy(update={"topics": ["u"], "name": "n", "start": "latest"})
    >>> spec_fingerprint(moved) == spec_fingerprint(spec)
    True
    >>> reordered = ModelSpec.model_validate({**spec.model_dump(), "include": ["b", "a"]})
    >>> spec_fingerprint(reordered) == spec_fingerprint(spec)
    True
    >>> wider = ModelSpec.model_validate({**spec.model_dump(), "rolling_window": 50})
    >>> spec_fingerprint(wider) == spec_fingerprint(spec)
    False

    """
    return hashlib.sha256(_dumps(_canonical(spec)).encode()).hexdigest()


def spec_changes(old: ModelSpec, new: ModelSpec) -> list[str]:
    """The learning fields whose values differ between two specs, in ``LEARNING_FIELDS``
    order; empty when the fingerprints are equal.

    Examples
    --------
    >>> old = ModelSpec(
    ...     name="m", topics=["t"], task="binary",
    ...     pipeline=[{"class": "linear_model.LogisticRegression"}],
    ... )
    >>> new = ModelSpec.model_validate(
    ...     {**old.model_dump(), "label": "y", "exclude": ["ip"], "checkpoint": {"every_events": 5}}
    ... )
    >>> spec_changes(old, new)
    ['exclude', 'label']
    >>> spec_changes(old, old)
    []

    """
    before, after = _canonical(old), _canonical(new)
    return [name for name in LEARNING_FIELDS if _dumps(before.get(name)) != _dumps(after.get(name))]
