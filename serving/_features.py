"""The checks on what a caller asks predictions for: features as the event contract allows
them (names to finite scalars), and batches of them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from livelearn.errors import InvalidFeatures

__all__ = ["check_batch", "check_features"]

_SCALARS = (bool, int, float, str)


def check_features(features: object) -> Mapping[str, Any]:
    """``features`` when it maps names to finite scalars (as the event contract allows).

    >>> check_features({"amount": 12.5, "country": "FR", "new": None})
    {'amount': 12.5, 'country': 'FR', 'new': None}
    >>> check_features({"amount": float("inf")})
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidFeatures: feature 'amount' is inf: numbers must be finite
    """
    if not isinstance(features, Mapping):
        raise InvalidFeatures(
            f"features must be a mapping of names to values, got {type(features).__name__}"
        )
    for name, value in features.items():
        if type(name) is not str:
            raise InvalidFeatures(f"feature name {name!r} is not a string", str(name))
        if type(value) is float or isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidFeatures(f"feature {name!r} is {value}: numbers must be finite", name)
        elif value is not None and not isinstance(value, _SCALARS):
            raise InvalidFeatures(
                f"feature {name!r} is a {type(value).__name__}: values must be numbers, "
                "strings, booleans or null",
                name,
            )
    return features


def check_batch(rows: object, keys: Sequence[str | None] | None) -> None:
    """Raise ``InvalidFeatures`` unless ``rows`` is a sequence of rows with one key a row
    (or no keys); the rows themselves are checked one by one as they are predicted."""
    if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Sequence):
        raise InvalidFeatures(f"rows must be a list of feature mappings, got {type(rows).__name__}")
    if keys is not None and len(keys) != len(rows):
        raise InvalidFeatures(f"{len(keys)} keys for {len(rows)} rows: give one key a row")
