"""Errors raised by the serving package.

::

    ServingError
    ├── UnknownModel (also a KeyError)       no served model has that name
    ├── ModelNotLoaded                       the model is served but no shard is loaded yet
    └── InvalidFeatures (also a ValueError)  the features are not a mapping of scalars
"""

from __future__ import annotations

__all__ = ["InvalidFeatures", "ModelNotLoaded", "ServingError", "UnknownModel"]


class ServingError(Exception):
    """Root of the serving package's errors."""


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
