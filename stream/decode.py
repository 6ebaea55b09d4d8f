"""Decode and validate events against the event contract (README.md, Event contract).

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

import msgspec

from livelearn.errors import InvalidEvent
from settings import EventSettings

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
    """A valid event; ``fields`` holds the label fields the models asked for."""

    id: str
    ts_ms: int | None
    key: str | None
    features: dict[str, Any]
    fields: dict[str, Any]


Scalar = bool | int | float | str | None


class EventDecoder:
    """Turns a Kafka record value into an ``Event`` or raises ``InvalidEvent``.

    Decoding and type checks run in C (msgspec, a struct built from the configured
    field names) rather than as orjson plus checks in Python, on a path that runs for
    every event; bench/bench_worker.py measures the worker against a consumer that only
    parses JSON with orjson.

    >>> decoder = EventDecoder(EventSettings(), label_fields=["label"])
    >>> decoder.decode(b'{"id": "a", "ts": 1000, "features": {"x": 1.5}, "label": true}').features
    {'x': 1.5}
    >>> decoder.decode(b'{"id": "a", "features": {"x": 1e999}}')
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: non_finite: Number out of range - at `$.features[...]`
    """

    def __init__(self, settings: EventSettings, label_fields: Iterable[str]) -> None:
        self._max_bytes = settings.max_bytes
        self._ts = settings.ts_field
        core = {
            "id": settings.id_field,
            "features": settings.features_field,
            "ts": settings.ts_field,
            "key": settings.key_field,
        }
        attr_of = {name: attr for attr, name in core.items()}
        fields: list[Any] = [
            ("id", str | int),
            ("features", dict[str, Scalar]),
            ("ts", str | int | None, None),
            ("key", str | None, None),
        ]
        rename = dict(core)
        for i, name in enumerate(dict.fromkeys(label_fields)):
            if name not in attr_of:
                attr_of[name] = f"label_{i}"
                fields.append((f"label_{i}", Scalar, None))
                rename[f"label_{i}"] = name
        self._labels = tuple((name, attr_of[name]) for name in dict.fromkeys(label_fields))
        wire = msgspec.defstruct("WireEvent", fields, rename=rename)
        self._decoder = msgspec.json.Decoder(wire)

    def decode(self, value: bytes | None) -> Event:
        """Decode one record value; see the class docstring."""
        if value is None:
            raise InvalidEvent("not_json", "the record has no value (a tombstone)")
        if len(value) > self._max_bytes:
            raise InvalidEvent(
                "too_large", f"{len(value)} bytes is over events.max_bytes={self._max_bytes}"
            )
        try:
            wire: Any = self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            raise self._classify_validation_error(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise _classify_json_error(value, exc) from None
        ts = wire.ts
        ts_ms = ts if ts is None or type(ts) is int else parse_timestamp(ts, self._ts)
        labels = {name: getattr(wire, attr) for name, attr in self._labels}
        return Event(str(wire.id), ts_ms, wire.key, wire.features, labels)

    def _classify_validation_error(self, message: str) -> InvalidEvent:
        if message.startswith("Object missing required field"):
            return InvalidEvent("missing_field", message)
        if message.startswith("Number out of range"):
            return InvalidEvent("non_finite", message)
        if " - at `" not in message:  # the top level is not an object
            return InvalidEvent("not_object", message)
        if message.endswith(f"at `$.{self._ts}`"):
            return InvalidEvent("bad_timestamp", message)
        return InvalidEvent("wrong_type", message)


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


def _classify_json_error(value: bytes, exc: Exception) -> InvalidEvent:
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
