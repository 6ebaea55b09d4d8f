"""livelearn's serving side: the lookup client that reads verified snapshots from Redis and
answers predictions from memory, and its metrics (the HTTP API, `serving.api`, builds on
them). Its errors are `livelearn.ServingError` and its subclasses."""

from __future__ import annotations

from livelearn.serving.lookup import Lookup, Prediction
from livelearn.serving.metrics import ServingMetrics

__all__ = ["Lookup", "Prediction", "ServingMetrics"]
