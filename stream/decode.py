"""Decode and validate events against the event contract (README.md, Event contract).

    {"id": "…", "ts": "2026-11-26T10:00:00Z" | 1764151200000, "key": "…" | null,
     "features": {"amount": 12.5, "country": "FR", …}, "label": true | 3.2 | "cat" | null}

Field names come from ``EventSettings``; the label fields are the models'. A bad
event raises ``InvalidEvent`` whose ``reason`` is one of ``InvalidReason``, and nothing
else: invalid UTF-8 (even in a field no model reads), a key twice in one object, an
integer feature outside 64 bits, nesting deeper than the interpreter's recursion limit
and a time outside the configured window each have their reason.

A valid event is decoded by msgspec, in C. When msgspec refuses a record, the reason is
not taken from its exception or its message, which change between releases:
stream/_diagnose.py reads the record again with the standard library and names the fault.
A record with several faults gets the first of these that applies:

1. ``too_large``, over ``events.max_bytes``, before anything is read (a tombstone is
   ``not_json``).
2. ``not_json``: the record is not JSON text (invalid UTF-8 outside a string included).
   Three faults do not count here, as they have a reason of their own in 3: invalid
   UTF-8 inside a string, the literals NaN, Infinity and -Infinity, and nesting too deep
   for the interpreter's recursion limit (then every array or object opened more than
   256 levels deep is cut out, up to its end or, left open, to the end of the record).
3. Otherwise the fault met first reading the record from its start, each value judged
   where it stands:

   - the top level is not an object: ``not_object``;
   - a key or string holding invalid UTF-8 or a lone surrogate: ``bad_encoding``;
   - a key that its object already has: ``duplicate_key``;
   - NaN, Infinity or -Infinity: ``non_finite``;
   - a time that is not an ISO-8601 string with a zone or integer milliseconds, or is
     outside the window: ``bad_timestamp``;
   - a number too large for a double as a feature, a label or in a field no model reads:
     ``non_finite``; an integer of more than 4300 characters as the id, a feature, a
     label or in a field no model reads, or a feature outside 64 bits: ``out_of_range``;
   - any other value of a kind its field does not take: ``wrong_type``; an array or
     object where a scalar belongs is refused without reading inside it;
   - nesting cut out in 2, in a field no model reads: ``too_deep``;
   - at the end of the top-level object, no ``id``, or no ``features`` (and, where
     delayed labels are taken, no label): ``missing_field``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from livelearn.errors import InvalidEvent
from livelearn.settings import EventSettings
from livelearn.stream._diagnose import Layout, diagnose, missing_features

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


class Event(msgspec.Struct, frozen=True, gc=False):
    """A valid event; ``fields`` holds the label fields the models asked for.

    ``features`` is None in a label-only event (a delayed label for the event ``id``),
    which a decoder accepts only when a model of the topic takes delayed labels. Built
    in C, once per event, and never tracked by the garbage collector: it holds no cycle.
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
# What msgspec may raise on a record; the reason is then diagnose's, whatever was raised.
_REFUSALS = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError, ValueError)


class EventDecoder:
    """Turns a Kafka record value into an ``Event`` or raises ``InvalidEvent``.

    Decoding and type checks run in C (msgspec, a struct built from the configured
    field names) rather than as orjson plus checks in Python, on a path that runs for
    every event; bench/bench_worker.py measures the worker against a consumer that only
    parses JSON with orjson. A refused record's reason is found by stream/_diagnose.py.

    >>> decoder = EventDecoder(EventSettings(), label_fields=["label"])
    >>> decoder.decode(b'{"id": "a", "ts": 1000, "features": {"x": 1.5}, "label": true}').features
    {'x': 1.5}
    >>> decoder.decode(b'{"id": "a", "features": {"x": 1e999}}')
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: non_finite: $.features.x is 1e999, too large for a double
    >>> decoder.decode(b'{"id": "a", "features": {"x": 1, "x": "one"}}')
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: duplicate_key: the key 'x' appears twice in $.features
    >>> decoder.decode(b'{"id": ["a"], "features": {"n": NaN}}')
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: wrong_type: $.id is an array; an id is a string or an integer
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
        self._layout = Layout(
            id=settings.id_field,
            ts=settings.ts_field,
            key=settings.key_field,
            features=settings.features_field,
            labels=tuple(name for name, _ in self._labels),
            label_only=label_only,
        )
        self._n_fields = len(fields)
        wire = msgspec.defstruct("WireEvent", fields, rename=rename, gc=False)
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
        except _REFUSALS as exc:
            raise self._refused(value, produced_ms, exc) from None
        features = wire.features
        labels = {}
        unset = 0
        for name, attr in self._labels:
            label = getattr(wire, attr)
            if label is UNSET:
                unset += 1
                label = None
            labels[name] = label
        ts = wire.ts
        key = wire.key
        # msgspec keeps the last of two equal keys and skips unknown fields unread. With
        # no duplicate, no unknown field and no comma inside a string, the record's commas
        # are exactly the separators of the pairs decoded; anything else gets the full check.
        pairs = self._n_fields - unset - (ts is UNSET) - (key is UNSET) - (features is UNSET)
        if value.count(b",") != pairs - 1 + (len(features) - 1 if features else 0):
            self._check_whole_record(value, produced_ms)
        if ts is UNSET or ts is None:
            ts_ms = None
        else:
            # _ts_ms written out, on the path every event takes
            ts_ms = ts if type(ts) is int else parse_timestamp(ts, self._ts)
            now_ms = (
                produced_ms
                if produced_ms is not None and produced_ms >= 0
                else self._clock() * 1000.0
            )
            if not 0 <= ts_ms <= now_ms + self._max_future_ms or ts_ms < now_ms - self._max_age_ms:
                raise self._outside_window(ts_ms, now_ms)
        if features is UNSET:
            if all(label is None for label in labels.values()):
                raise missing_features(self._layout)
            features = None
        event_id = wire.id
        return Event(
            event_id if type(event_id) is str else str(event_id),
            ts_ms,
            None if key is UNSET else key,
            features,
            labels,
        )

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

    def _ts_ms(self, ts: int | str, produced_ms: int | None) -> int:
        """The event time ``ts`` in milliseconds, refused outside the window (as decode)."""
        ts_ms = ts if type(ts) is int else parse_timestamp(ts, self._ts)
        now_ms = (
            produced_ms if produced_ms is not None and produced_ms >= 0 else self._clock() * 1000.0
        )
        if not 0 <= ts_ms <= now_ms + self._max_future_ms or ts_ms < now_ms - self._max_age_ms:
            raise self._outside_window(ts_ms, now_ms)
        return ts_ms

    def _refused(self, value: bytes, produced_ms: int | None, exc: BaseException) -> InvalidEvent:
        """The fault livelearn finds in a record msgspec refused with ``exc``."""
        fault = diagnose(value, self._layout, lambda ts: self._ts_ms(ts, produced_ms))
        if fault is not None:
            return fault
        # A msgspec stricter than the contract; the record is refused all the same.
        reason: InvalidReason = "too_deep" if isinstance(exc, RecursionError) else "not_json"
        return InvalidEvent(
            reason, f"msgspec refused the record ({str(exc)[:200]}) but livelearn found no fault"
        )

    def _check_whole_record(self, value: bytes, produced_ms: int | None) -> None:
        """Refuse invalid UTF-8, out-of-range numbers and duplicate keys anywhere in a record.

        The record has been decoded into the event already, so it is JSON. A generic decode
        (in C) reads every string and number; when its re-encoding has as many commas as
        the record, no pair was dropped as a duplicate. Only otherwise (a comma inside a
        string escaped as ``\\u002c``, or a duplicate) does the slower exact check run. A
        fault is named by diagnose, so that the precedence is the module's.
        """
        try:
            parsed = msgspec.json.decode(value)
            commas = msgspec.json.encode(parsed).count(b",")
        except _REFUSALS as exc:
            raise self._refused(value, produced_ms, exc) from None
        if commas == value.count(b",") and b"\\u002c" not in value.lower():
            return
        try:
            json.loads(value.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
        except (_Duplicate, RecursionError, ValueError) as exc:
            raise self._refused(value, produced_ms, exc) from None


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


class _Duplicate(Exception):
    """A key twice in one object, found by the exact check."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    """Raise ``_Duplicate`` if two of an object's pairs have the same key."""
    if len({key for key, _ in pairs}) < len(pairs):
        raise _Duplicate
