"""The ML domain of livelearn: model specs, learners, snapshots and sanitization.

No network I/O happens here; ``stream`` drives these objects from Kafka, ``store`` keeps
their snapshots in Redis and ``serving`` answers with them. Errors: `livelearn.errors`.
"""

from __future__ import annotations

from livelearn.learners.combine import (
    combine_metrics,
    combine_proba,
    combine_values,
    murmur2,
    partition_for_key,
    predicted_class,
)
from livelearn.learners.fingerprint import LEARNING_FIELDS, spec_changes, spec_fingerprint
from livelearn.learners.labels import check_label
from livelearn.learners.learner import Learner, in_holdout, load_learner
from livelearn.learners.sanitize import Sanitizer
from livelearn.learners.snapshot import (
    DEFAULT_KEY_ID,
    SNAPSHOT_FORMAT,
    Binding,
    Keyring,
    SnapshotCodec,
    stats_digest,
)
from livelearn.learners.spec import (
    CheckpointPolicy,
    ModelSpec,
    RiverRef,
    SanitizeRule,
    StartPosition,
    Task,
)

__all__ = [
    "DEFAULT_KEY_ID",
    "LEARNING_FIELDS",
    "SNAPSHOT_FORMAT",
    "Binding",
    "CheckpointPolicy",
    "Keyring",
    "Learner",
    "ModelSpec",
    "RiverRef",
    "SanitizeRule",
    "Sanitizer",
    "SnapshotCodec",
    "StartPosition",
    "Task",
    "check_label",
    "combine_metrics",
    "combine_proba",
    "combine_values",
    "in_holdout",
    "load_learner",
    "murmur2",
    "partition_for_key",
    "predicted_class",
    "spec_changes",
    "spec_fingerprint",
    "stats_digest",
]
