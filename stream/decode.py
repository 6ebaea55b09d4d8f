"""Decode and validate events against the contract in DESIGN.md.

    {"id": "…", "ts": "2026-11-26T10:00:00Z" | 1764151200000, "key": "…" | null,
     "features": {"amount": 12.5, "country": "FR", …}, "label": true | 3.2 | "cat" | null}

Field names come from ``EventSettings``; the label fields are the models'. A bad
event raises ``InvalidEvent`` whose ``reason`` is one of ``InvalidReason``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, NamedTuple

import orjson

from stream._errors import InvalidEvent
from stream.settings import EventSettings

InvalidReason = Literal[
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "non_finite",
    "bad_timestamp",
]
INVALID_REASONS: tuple[InvalidReason, ...] = InvalidReason.__args__  # type: ignore[attr-defined]


class Event(NamedTuple):
    """A valid event; ``fields`` is the whole decoded object, for label look-up."""

    id: str
    ts_ms: int | None
    key: str | None
    features: dict[str, Any]
    fields: dict[str, Any]


class EventDecoder:
    """Turns a Kafka record value into an ``Event`` or raises ``InvalidEvent``.

    >>> decoder = EventDecoder(EventSettings(), label_fields=["label"])
    >>> decoder.decode(b'{"id": "a", "ts": 1000, "features": {"x": 1.5}, "label": true}').features
    {'x': 1.5}
    >>> decoder.decode(b'{"id": "a", "features": {"x": 1e999}}')
    Traceback (most recent call last):
    ...
    stream._errors.InvalidEvent: non_finite: the event holds a number too large for a double
    """

    def __init__(self, settings: EventSettings, label_fields: Iterable[str]) -> None:
        self._max_bytes = settings.max_bytes
        self._id = settings.id_field
        self._ts = settings.ts_field
        self._key = settings.key_field
        self._features = settings.features_field
        self._labels = tuple(dict.fromkeys(label_fields))

    def decode(self, value: bytes | None) -> Event:
        """Decode one record value; see the class docstring."""
        if value is None:
            raise InvalidEvent("not_json", "the record has no value (a tombstone)")
        if len(value) > self._max_bytes:
            raise InvalidEvent(
                "too_large", f"{len(value)} bytes is over events.max_bytes={self._max_bytes}"
            )
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise _classify_json_error(value, exc) from None
        if type(obj) is not dict:
            raise InvalidEvent("not_object", f"the event is a JSON {type(obj).__name__}")
        event_id = obj.get(self._id)
        if event_id is None:
            raise InvalidEvent("missing_field", f"{self._id!r} is missing")
        if type(event_id) is not str:
            if type(event_id) is not int:
                raise InvalidEvent("wrong_type", f"{self._id!r} must be a string or integer")
            event_id = str(event_id)
        features = obj.get(self._features)
        if features is None:
            raise InvalidEvent("missing_field", f"{self._features!r} is missing")
        if type(features) is not dict:
            raise InvalidEvent(
                "wrong_type", f"{self._features!r} must be an object, not {type(features).__name__}"
            )
        for name, x in features.items():
            kind = type(x)
            if kind is float:
                if not math.isfinite(x):
                    raise InvalidEvent("non_finite", f"feature {name!r} is {x}")
            elif kind is not int and kind is not str and kind is not bool and x is not None:
                raise InvalidEvent(
                    "wrong_type",
                    f"feature {name!r} must be a number, string, bool or null, not {kind.__name__}",
                )
        for field in self._labels:
            y = obj.get(field)
            kind = type(y)
            if kind is float:
                if not math.isfinite(y):  # type: ignore[arg-type]
                    raise InvalidEvent("non_finite", f"{field!r} is {y}")
            elif kind is not int and kind is not str and kind is not bool and y is not None:
                raise InvalidEvent(
                    "wrong_type",
                    f"{field!r} must be a bool, number, string or null, not {kind.__name__}",
                )
        key = obj.get(self._key)
        if key is not None and type(key) is not str:
            raise InvalidEvent("wrong_type", f"{self._key!r} must be a string or null")
        ts = obj.get(self._ts)
        ts_ms = None if ts is None else parse_timestamp(ts, self._ts)
        return Event(event_id, ts_ms, key, features, obj)


def parse_timestamp(ts: Any, field: str = "ts") -> int:
    """Milliseconds since the epoch from an ISO-8601 string or an integer of milliseconds.

    >>> parse_timestamp("2026-11-26T10:00:00Z")
    1795687200000
    >>> parse_timestamp(1764151200000)
    1764151200000
    """
    if type(ts) is int:
        return ts
    if type(ts) is str:
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            raise InvalidEvent("bad_timestamp", f"{field!r} {ts!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_timestamp", f"{field!r} {ts!r} has no time zone")
        return round(parsed.timestamp() * 1000)
    raise InvalidEvent(
        "bad_timestamp", f"{field!r} must be an ISO-8601 string or integer milliseconds"
    )


def _classify_json_error(value: bytes, exc: orjson.JSONDecodeError) -> InvalidEvent:
    """Tell a NaN or infinite number apart from text that is not JSON at all."""

    def refuse(constant: str) -> float:
        raise InvalidEvent("non_finite", f"the event holds {constant}")

    try:
        parsed = json.loads(value, parse_constant=refuse)
    except InvalidEvent as invalid:
        return invalid
    except (ValueError, UnicodeDecodeError):
        return InvalidEvent("not_json", f"not valid JSON ({exc})")
    if _has_infinity(parsed):
        return InvalidEvent("non_finite", "the event holds a number too large for a double")
    return InvalidEvent("not_json", f"not valid JSON ({exc})")


def _has_infinity(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isinf(obj)
    if isinstance(obj, dict):
        return any(_has_infinity(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_infinity(v) for v in obj)
    return False
