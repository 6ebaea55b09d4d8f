"""Exceptions raised by the ``learners`` package.

The tree::

    LearnersError
    ├── SpecError (also a ValueError)     a model spec is invalid
    └── SnapshotError
        ├── SnapshotRefused               a blob is unsigned, tampered with or truncated
        └── SnapshotIncompatible          a signed blob this build cannot load

"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LearnersError",
    "SnapshotError",
    "SnapshotIncompatible",
    "SnapshotRefused",
    "SpecError",
]


class LearnersError(Exception):
    """Root of every error raised by ``learners``."""


class SpecError(LearnersError, ValueError):
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


class SnapshotError(LearnersError):
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
