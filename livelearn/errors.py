"""Every error livelearn raises on purpose, under one root.

::

    LivelearnError
    ├── ConfigError (also a ValueError)        a setting is wrong: start-up stops, exit 2
    │   └── SpecError                          a model spec is invalid
    ├── ServiceUnavailable (a ConnectionError) Kafka or Redis does not answer: exit 69
    ├── InvalidEvent (also a ValueError)       an event goes to the dead-letter topic
    ├── DeadLetterError                        dead letters not delivered after their retries
    ├── SnapshotError                          a snapshot blob cannot be loaded
    │   ├── SnapshotRefused                    unsigned, tampered with or truncated
    │   └── SnapshotIncompatible               signed, but this build cannot load it
    ├── StaleEpochError                        a checkpoint write lost its fencing epoch
    ├── VersionConflict                        a checkpoint write's version is not the newest
    ├── NotReplicated                          a checkpoint written, but no replica confirmed it
    ├── ReleaseError (also a ValueError)       no such release, or nothing to freeze
    ├── StackError (also a RuntimeError)       the local developer stack cannot start: exit 69
    └── ServingError                           a prediction cannot be answered
        ├── UnknownModel (also a KeyError)     no served model has that name
        ├── ModelNotLoaded                     served, but no shard is loaded yet
        └── InvalidFeatures (also a ValueError) the features are not a mapping of scalars

The command line turns `ConfigError` into exit code 2 and `ServiceUnavailable` into 69
(``EX_UNAVAILABLE``); anything else is a bug, shown with its traceback, exit code 1.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "DeadLetterError",
    "InvalidEvent",
    "InvalidFeatures",
    "LivelearnError",
    "ModelNotLoaded",
    "NotReplicated",
    "ReleaseError",
    "ServiceUnavailable",
    "ServingError",
    "SnapshotError",
    "SnapshotIncompatible",
    "SnapshotRefused",
    "SpecError",
    "StackError",
    "StaleEpochError",
    "UnknownModel",
    "VersionConflict",
]


class LivelearnError(Exception):
    """Root of every error livelearn raises on purpose."""


class ConfigError(LivelearnError, ValueError):
    """A setting is wrong; the message names it, its value and the fix."""


class SpecError(ConfigError):
    """A model spec is invalid.

    Parameters
    ----------
    loc
        Path of the offending setting, e.g. ``models[0].pipeline[1].class``; empty when the
        problem concerns the spec as a whole.
    problem
        What is wrong, with the value, and what is allowed.
    *more
        Further ``(loc, problem)`` pairs when a spec has several problems.

    """

    def __init__(self, loc: str, problem: str, *more: tuple[str, str]) -> None:
        lines = [f"{where}: {what}" if where else what for where, what in ((loc, problem), *more)]
        super().__init__("\n".join(lines))
        self.loc = loc
        self.problem = problem
        self.more = more

    def __reduce__(self) -> tuple[type[SpecError], tuple[Any, ...]]:
        return (type(self), (self.loc, self.problem, *self.more))


class ServiceUnavailable(LivelearnError, ConnectionError):
    """Kafka or Redis cannot be reached."""


class InvalidEvent(LivelearnError, ValueError):
    """An event that goes to the dead-letter topic; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeadLetterError(LivelearnError):
    """Dead letters the broker did not acknowledge after every retry; nothing was dropped.

    ``sources`` are the (topic, partition, offset) of the events whose dead letters were
    not acknowledged, and ``causes`` the last error of each, in the same order. No
    checkpoint may pass these offsets until a later flush delivers them (the sink keeps
    them): the worker pauses those partitions meanwhile.
    """

    def __init__(self, sources: list[tuple[str, int, int]], causes: list[str]) -> None:
        lost = "; ".join(
            f"{topic}/{partition}@{offset}: {cause}"
            for (topic, partition, offset), cause in zip(sources, causes, strict=True)
        )
        super().__init__(
            f"{len(sources)} dead letter(s) not delivered after every retry ({lost}); "
            "check that Kafka answers and that the dead-letter topics exist and accept "
            "records of this size; nothing is checkpointed past these offsets until Kafka "
            "acknowledges them"
        )
        self.sources = sources
        self.causes = causes

    def __reduce__(self) -> tuple[type[DeadLetterError], tuple[Any, ...]]:
        return (type(self), (self.sources, self.causes))


class SnapshotError(LivelearnError):
    """A snapshot blob cannot be loaded."""


class SnapshotRefused(SnapshotError):
    """A blob failed verification (bad magic, truncated, missing or wrong signature).

    Nothing from a refused blob is ever unpickled. ``reason`` says which check failed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"snapshot refused: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple[type[SnapshotRefused], tuple[str]]:
        return (type(self), (self.reason,))


class SnapshotIncompatible(SnapshotError):
    """A correctly signed blob that this build cannot load (unknown format or classes).

    ``found_format`` is the format version written in the blob.
    """

    def __init__(self, message: str, found_format: int) -> None:
        super().__init__(message)
        self.found_format = found_format

    def __reduce__(self) -> tuple[type[SnapshotIncompatible], tuple[str, int]]:
        return (type(self), (str(self), self.found_format))


class StaleEpochError(LivelearnError):
    """A checkpoint write was refused: another worker owns the shard now."""

    def __init__(self, shard: str, held: int, current: int | None) -> None:
        super().__init__(
            f"checkpoint of {shard} refused: this worker holds epoch {held}, "
            f"the store has {current}; the shard was reassigned"
        )
        self.shard = shard
        self.held = held
        self.current = current


class VersionConflict(LivelearnError):
    """A checkpoint write was refused: the store holds version ``stored``, at or above the
    ``version`` signed into the write (after a `livelearn models reset` kept the count, or
    an edit of the store). The writer signs ``stored + 1`` and writes again."""

    def __init__(self, shard: str, version: int, stored: int) -> None:
        super().__init__(
            f"checkpoint of {shard} refused: its version {version} is not above the stored "
            f"version {stored}"
        )
        self.shard = shard
        self.version = version
        self.stored = stored

    def __reduce__(self) -> tuple[type[VersionConflict], tuple[str, int, int]]:
        return (type(self), (self.shard, self.version, self.stored))


class NotReplicated(LivelearnError):
    """A checkpoint was written on the Redis master, but fewer than ``wanted`` replicas
    acknowledged it within ``timeout_ms`` (``WAIT``): a failover now could lose it.

    The write stands (version ``version`` is stored and announced); the caller holds
    whatever must not outrun a durable checkpoint (the worker, its Kafka offset commit)
    until a later checkpoint of the shard is acknowledged.
    """

    def __init__(self, shard: str, version: int, acked: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"checkpoint {version} of {shard} written, but {acked} of {wanted} replica(s) "
            f"acknowledged it within redis.wait_timeout_ms={timeout_ms}; Kafka's offsets "
            "are held until a later checkpoint is acknowledged (check the replicas' link, "
            "or raise redis.wait_timeout_ms)"
        )
        self.shard = shard
        self.version = version
        self.acked = acked
        self.wanted = wanted
        self.timeout_ms = timeout_ms

    def __reduce__(self) -> tuple[type[NotReplicated], tuple[str, int, int, int, int]]:
        return (type(self), (self.shard, self.version, self.acked, self.wanted, self.timeout_ms))


class ReleaseError(LivelearnError, ValueError):
    """A release operation cannot be done (no such release, nothing to freeze)."""


class StackError(LivelearnError, RuntimeError):
    """The local developer stack (`devtools.stack`) cannot start, or was asked for something
    it cannot do."""


class ServingError(LivelearnError):
    """A prediction cannot be answered."""


class UnknownModel(ServingError, KeyError):
    """No served model has this name; ``model`` is the name and ``known`` the served ones."""

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(model)
        self.model = model
        self.known = known

    def __str__(self) -> str:
        served = ", ".join(self.known) or "none"
        return f"no served model named {self.model!r} (served: {served})"


class ModelNotLoaded(ServingError):
    """The model is served but the shard a prediction needs has no checkpoint loaded yet.

    ``model`` names it; ``retry_after`` is a suggested wait in seconds (the reload check).
    """

    def __init__(self, model: str, detail: str, retry_after: float) -> None:
        super().__init__(f"model {model!r} cannot predict yet: {detail}")
        self.model = model
        self.retry_after = retry_after


class InvalidFeatures(ServingError, ValueError):
    """The features are not a mapping of names to scalars; ``field`` names the bad one."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field
