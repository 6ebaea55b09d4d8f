"""livelearn's Kafka, Redis and process side: settings, decoding, the worker loop,
checkpoints, dead letters, metrics and the command line.

The names below load on first use, so a process that needs one part (the Kafka fetch
process, ``livelearn stack``) does not import River, pydantic and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stream._errors import (
    ConfigError,
    InvalidEvent,
    ServiceUnavailable,
    StaleEpochError,
    StreamError,
)

if TYPE_CHECKING:
    from stream.checkpoint import Checkpoint, CheckpointStore, RedisCheckpointStore, ShardId
    from stream.decode import Event, EventDecoder
    from stream.settings import Settings, load_settings
    from stream.worker import Worker

_LAZY = {
    "Checkpoint": "stream.checkpoint",
    "CheckpointStore": "stream.checkpoint",
    "RedisCheckpointStore": "stream.checkpoint",
    "ShardId": "stream.checkpoint",
    "Event": "stream.decode",
    "EventDecoder": "stream.decode",
    "Settings": "stream.settings",
    "load_settings": "stream.settings",
    "Worker": "stream.worker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")


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
