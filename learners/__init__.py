"""The ML domain of livelearn: model specs, learners, snapshots and sanitization.

No network I/O happens here; ``stream`` drives these objects from Kafka and Redis.
"""

from __future__ import annotations

from learners._errors import (
    LearnersError,
    SnapshotError,
    SnapshotIncompatible,
    SnapshotRefused,
    SpecError,
)
from learners.combine import (
    combine_metrics,
    combine_proba,
    combine_values,
    murmur2,
    partition_for_key,
    predicted_class,
)
from learners.learner import Learner, load_learner
from learners.sanitize import Sanitizer
from learners.snapshot import SNAPSHOT_FORMAT, SnapshotCodec
from learners.spec import CheckpointPolicy, ModelSpec, RiverRef, SanitizeRule, Task

__all__ = [
    "SNAPSHOT_FORMAT",
    "CheckpointPolicy",
    "Learner",
    "LearnersError",
    "ModelSpec",
    "RiverRef",
    "SanitizeRule",
    "Sanitizer",
    "SnapshotCodec",
    "SnapshotError",
    "SnapshotIncompatible",
    "SnapshotRefused",
    "SpecError",
    "Task",
    "combine_metrics",
    "combine_proba",
    "combine_values",
    "load_learner",
    "murmur2",
    "partition_for_key",
    "predicted_class",
]
