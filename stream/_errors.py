"""Errors raised by the stream package.

::

    StreamError
    ├── ConfigError          a setting is wrong; start-up stops
    ├── InvalidEvent         an event cannot be decoded or fails validation
    ├── StaleEpochError      a checkpoint write lost its fencing epoch
    └── ServiceUnavailable   Kafka or Redis cannot be reached
"""

from __future__ import annotations


class StreamError(Exception):
    """Root of the stream package's errors."""


class ConfigError(StreamError, ValueError):
    """A setting is wrong; the message names it, its value and the fix."""


class InvalidEvent(StreamError, ValueError):
    """An event that goes to the dead-letter topic; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StaleEpochError(StreamError):
    """A checkpoint write was refused: another worker owns the shard now."""

    def __init__(self, shard: str, held: int, current: int | None) -> None:
        super().__init__(
            f"checkpoint of {shard} refused: this worker holds epoch {held}, "
            f"the store has {current}; the shard was reassigned"
        )
        self.shard = shard
        self.held = held
        self.current = current


class ServiceUnavailable(StreamError, ConnectionError):
    """Kafka or Redis cannot be reached."""
