"""Decode and validate events against the event contract (README.md, Event contract).

    {"id": "…", "ts": "2026-11-26T10:00:00Z" | 1764151200000, "key": "…" | null,
     "features": {"amount": 12.5, "country": "FR", …}, "label": true | 3.2 | "cat" | null}

Field names come from ``EventSettings``; the label fields are the models'. A bad
event raises ``InvalidEvent`` whose ``reason`` is one of ``InvalidReason``, and nothing
else: invalid UTF-8 (even in a field no model reads), a key twice in one object, an
integer feature outside 64 bits, nesting deeper than the interpreter's recursion limit
and a time outside the configured window each have their reason.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from livelearn.errors import InvalidEvent
from livelearn.settings import EventSettings

InvalidReason = Literal[
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "non_finite",
    "out_of_range",
    "bad_timestamp",
    "bad_encoding",
    "duplicate_key",
    "too_deep",
]
INVALID_REASONS: tuple[InvalidReason, ...] = InvalidReason.__args__  # type: ignore[attr-defined]


class Event(NamedTuple):
    """A valid event; ``fields`` holds the label fields the models asked for.

    ``features`` is None in a label-only event (a delayed label for the event ``id``),
    which a decoder accepts only when a model of the topic takes delayed labels.
    """

    id: str
    ts_ms: int | None
    key: str | None
    features: dict[str, Any] | None
    fields: dict[str, Any]


Scalar = bool | int | float | str | None
# A bigger integer overflows River's float arithmetic (10**400) or silently loses
# precision; msgspec checks the bound in C while it parses.
_FeatureInt = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Feature = bool | _FeatureInt | float | str | None
_INT_RANGE_MESSAGES = ("Integer value out of range", "Expected `int` <=", "Expected `int` >=")


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
    >>> decoder.decode(b'{"id": "a", "features": {"x": 1, "x": "one"}}')
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: duplicate_key: the key 'x' appears twice in one object
    >>> decoder.decode(b'{"id": "a", "ts": -1, "features": {}}').ts_ms
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: bad_timestamp: 'ts' -1 is before 1970

    Parameters
    ----------
    settings
        Field names, ``max_bytes`` and the timestamp window.
    label_fields
        The label fields the models read.
    clock
        Seconds since the epoch, for the timestamp window; tests pass a fixed one.

    """

    def __init__(
        self,
        settings: EventSettings,
        label_fields: Iterable[str],
        clock: Callable[[], float] = time.time,
        *,
        label_only: bool = False,
    ) -> None:
        self._max_bytes = settings.max_bytes
        self._ts = settings.ts_field
        self._features = settings.features_field
        self._clock = clock
        self._max_future_ms = settings.ts_max_future_s * 1000.0
        days = settings.ts_max_age_days
        self._max_age_ms = math.inf if days is None else days * 86_400_000.0
        core = {
            "id": settings.id_field,
            "features": settings.features_field,
            "ts": settings.ts_field,
            "key": settings.key_field,
        }
        attr_of = {name: attr for attr, name in core.items()}
        # Optional fields default to UNSET, so that decode can count the pairs present.
        fields: list[Any] = [
            ("id", str | int),
            ("features", dict[str, _Feature] | UnsetType, UNSET)
            if label_only
            else ("features", dict[str, _Feature]),
            ("ts", str | int | None | UnsetType, UNSET),
            ("key", str | None | UnsetType, UNSET),
        ]
        rename = dict(core)
        for i, name in enumerate(dict.fromkeys(label_fields)):
            if name not in attr_of:
                attr_of[name] = f"label_{i}"
                fields.append((f"label_{i}", Scalar | UnsetType, UNSET))
                rename[f"label_{i}"] = name
        self._labels = tuple((name, attr_of[name]) for name in dict.fromkeys(label_fields))
        self._n_fields = len(fields)
        wire = msgspec.defstruct("WireEvent", fields, rename=rename)
        self._decoder = msgspec.json.Decoder(wire)

    def decode(self, value: bytes | None, produced_ms: int | None = None) -> Event:
        """Decode one record value; see the class docstring.

        ``produced_ms`` is the record's Kafka timestamp: the event's time is judged against
        it (not ahead by more than ``events.ts_max_future_s``, not older than
        ``events.ts_max_age_days``), so a record gets the same verdict on every worker, on
        every restart and in a replay. Without one (or with Kafka's -1), the clock is used.
        """
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
        except UnicodeDecodeError as exc:  # msgspec checks the strings it keeps
            raise _bad_encoding(exc) from None
        except RecursionError:
            raise _too_deep() from None
        features = wire.features
        # msgspec keeps the last of two equal keys and skips unknown fields unread. With
        # no duplicate, no unknown field and no comma inside a string, the record's commas
        # are exactly the separators of the pairs decoded; anything else gets the full check.
        present = self._n_fields - msgspec.structs.astuple(wire).count(UNSET)
        if value.count(b",") != present - 1 + (len(features) - 1 if features else 0):
            _check_whole_record(value)
        ts = wire.ts
        if ts is UNSET or ts is None:
            ts_ms = None
        else:
            ts_ms = ts if type(ts) is int else parse_timestamp(ts, self._ts)
            now_ms = (
                produced_ms
                if produced_ms is not None and produced_ms >= 0
                else self._clock() * 1000.0
            )
            if not 0 <= ts_ms <= now_ms + self._max_future_ms or ts_ms < now_ms - self._max_age_ms:
                raise self._outside_window(ts_ms, now_ms)
        key = wire.key
        labels = {
            name: None if (label := getattr(wire, attr)) is UNSET else label
            for name, attr in self._labels
        }
        if features is UNSET:
            if all(label is None for label in labels.values()):
                raise InvalidEvent(
                    "missing_field",
                    f"an event needs {self._features!r}, or, as a delayed label, one of "
                    f"{', '.join(repr(name) for name, _ in self._labels)}",
                )
            features = None
        return Event(str(wire.id), ts_ms, None if key is UNSET else key, features, labels)

    def _outside_window(self, ts_ms: int, now_ms: float) -> InvalidEvent:
        digits = str(ts_ms)
        if len(digits) > 24:
            digits = f"{digits[:20]}… ({len(digits)} digits)"
        shown = f"{self._ts!r} {digits}"
        if ts_ms < 0:
            return InvalidEvent("bad_timestamp", f"{shown} is before 1970")
        if ts_ms > now_ms:
            return InvalidEvent(
                "bad_timestamp",
                f"{shown} is more than events.ts_max_future_s="
                f"{self._max_future_ms / 1000:g} s ahead of when the record was produced "
                "(its Kafka timestamp); check the producer's clock or raise the setting",
            )
        return InvalidEvent(
            "bad_timestamp",
            f"{shown} is older than events.ts_max_age_days="
            f"{self._max_age_ms / 86_400_000:g} when the record was produced (its Kafka "
            "timestamp); raise or unset the setting to learn it",
        )

    def _classify_validation_error(self, message: str) -> InvalidEvent:
        if message.startswith("Object missing required field"):
            return InvalidEvent("missing_field", message)
        if message.endswith(f"at `$.{self._ts}`"):
            return InvalidEvent("bad_timestamp", message)
        if message.startswith("Number out of range"):
            return InvalidEvent("non_finite", message)
        if message.startswith(_INT_RANGE_MESSAGES):
            return InvalidEvent("out_of_range", f"{message}; integers must fit in 64 bits")
        if " - at `" not in message:  # the top level is not an object
            return InvalidEvent("not_object", message)
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


def _check_whole_record(value: bytes) -> None:
    """Refuse invalid UTF-8, out-of-range numbers and duplicate keys anywhere in a record.

    The record has been decoded into the event already, so it is JSON. A generic decode
    (in C) reads every string and number; when its re-encoding has as many commas as the
    record, no pair was dropped as a duplicate. Only otherwise (a comma inside a string
    escaped as ``\\u002c``, or a duplicate) does the slower exact check run.
    """
    try:
        parsed = msgspec.json.decode(value)
        commas = msgspec.json.encode(parsed).count(b",")
    except UnicodeDecodeError as exc:
        raise _bad_encoding(exc) from None
    except RecursionError:
        raise _too_deep() from None
    except msgspec.ValidationError as exc:
        reason = "non_finite" if str(exc).startswith("Number") else "out_of_range"
        raise InvalidEvent(reason, f"{exc} (in a field no model reads)") from None
    if commas == value.count(b",") and b"\\u002c" not in value.lower():
        return
    try:
        json.loads(value.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except RecursionError:
        raise _too_deep() from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidEvent("duplicate_key", f"the key {key[:64]!r} appears twice in one object")
        seen.add(key)


def _bad_encoding(exc: UnicodeDecodeError) -> InvalidEvent:
    bad = exc.object[exc.start : exc.end]
    return InvalidEvent("bad_encoding", f"not valid UTF-8 ({exc.reason}: {bytes(bad)!r})")


def _too_deep() -> InvalidEvent:
    return InvalidEvent("too_deep", "arrays or objects nested deeper than the decoder allows")


def _classify_json_error(value: bytes, exc: Exception) -> InvalidEvent:
    """Tell a NaN or infinite number apart from text that is not JSON at all."""
    surrogate = InvalidEvent(
        "bad_encoding", f"a \\u escape is half of a surrogate pair, not a character ({exc})"
    )
    if "surrogate" in str(exc):
        return surrogate

    def refuse(constant: str) -> float:
        raise InvalidEvent("non_finite", f"the event holds {constant}")

    try:
        parsed = json.loads(value, parse_constant=refuse)
        infinite = _has_infinity(parsed)
    except InvalidEvent as invalid:
        return invalid
    except (ValueError, UnicodeDecodeError, RecursionError):
        return InvalidEvent("not_json", f"not valid JSON ({exc})")
    if infinite:
        return InvalidEvent("non_finite", "the event holds a number too large for a double")
    try:  # msgspec reports some lone surrogates as truncated input
        json.dumps(parsed, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return surrogate
    return InvalidEvent("not_json", f"not valid JSON ({exc})")


def _has_infinity(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isinf(obj)
    if isinstance(obj, dict):
        return any(_has_infinity(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_infinity(v) for v in obj)
    return False
