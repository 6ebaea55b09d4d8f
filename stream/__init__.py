"""livelearn's Kafka, Redis and process side: settings, decoding, the worker loop,
checkpoints, dead letters, metrics and the command line."""

from __future__ import annotations

from stream._errors import (
    ConfigError,
    InvalidEvent,
    ServiceUnavailable,
    StaleEpochError,
    StreamError,
)
from stream.checkpoint import Checkpoint, CheckpointStore, RedisCheckpointStore, ShardId
from stream.decode import Event, EventDecoder
from stream.settings import Settings, load_settings
from stream.worker import Worker

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "ConfigError",
    "Event",
    "EventDecoder",
    "InvalidEvent",
    "RedisCheckpointStore",
    "ServiceUnavailable",
    "Settings",
    "ShardId",
    "StaleEpochError",
    "StreamError",
    "Worker",
    "load_settings",
]
