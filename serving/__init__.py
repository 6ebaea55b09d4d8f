"""livelearn's serving side: the lookup client that reads verified snapshots from Redis and
answers predictions from memory, its metrics and errors (the HTTP API builds on them)."""

from __future__ import annotations

from serving._errors import InvalidFeatures, ModelNotLoaded, ServingError, UnknownModel
from serving.lookup import Lookup, Prediction
from serving.metrics import ServingMetrics

__all__ = [
    "InvalidFeatures",
    "Lookup",
    "ModelNotLoaded",
    "Prediction",
    "ServingError",
    "ServingMetrics",
    "UnknownModel",
]
