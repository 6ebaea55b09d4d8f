"""Property-based: whatever a hostile producer sends, decode returns a valid Event or raises
InvalidEvent, and never anything else."""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livelearn import InvalidEvent
from livelearn.settings import EventSettings
from livelearn.stream import EventDecoder
from livelearn.stream.decode import INVALID_REASONS

MAX_BYTES = 4096
NOW_S = 1_795_687_200.0

DECODER = EventDecoder(
    EventSettings(max_bytes=MAX_BYTES), label_fields=["label", "y"], clock=lambda: NOW_S
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

huge_ints = st.integers(min_value=-(10**400), max_value=10**400) | st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**400, -(10**400)]
)
floats = st.floats(allow_nan=True, allow_infinity=True)
json_scalars = st.none() | st.booleans() | st.integers() | huge_ints | floats | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(["id", "ts", "key", "features", "label", "y", "other"])
timestamps = (
    st.integers()
    | huge_ints
    | st.text(max_size=30)
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.sampled_from(["2026-11-26T10:00:00Z", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59+00:00"])
)


def to_json(obj: object) -> bytes:
    """JSON with NaN, Infinity and arbitrary integers, as a careless producer writes it."""
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


def check(raw: bytes | None) -> None:
    try:
        event = DECODER.decode(raw)
    except InvalidEvent as exc:
        assert exc.reason in INVALID_REASONS, exc.reason
        assert exc.detail
        return
    assert isinstance(event.id, str)
    assert event.key is None or isinstance(event.key, str)
    assert event.ts_ms is None or (
        type(event.ts_ms) is int and 0 <= event.ts_ms <= NOW_S * 1000 + 86_400_000
    )
    for name, value in event.features.items():
        assert isinstance(name, str)
        name.encode("utf-8")  # a str that UTF-8 can hold: no lone surrogates
        # None is part of the event contract (a missing value); the sanitizer and learner
        # decide what to do with it.
        assert value is None or type(value) in (bool, int, float, str), value
        if type(value) is float:
            assert math.isfinite(value)
        if type(value) is int:
            assert -(2**63) <= value < 2**63
            float(value)
        if type(value) is str:
            value.encode("utf-8")
    for label in event.fields.values():
        assert label is None or type(label) in (bool, int, float, str)
        if type(label) is float:
            assert math.isfinite(label)
        if type(label) is str:
            label.encode("utf-8")


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@PROPERTY
@given(json_values)
def test_random_json_documents(doc: object) -> None:
    check(to_json(doc))


@PROPERTY
@given(
    st.dictionaries(field_names, json_values, max_size=7),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
)
def test_events_with_wrong_types(top: dict, features: dict) -> None:
    top.setdefault("id", "e1")
    top.setdefault("features", features)
    check(to_json(top))


@PROPERTY
@given(
    st.text(max_size=10) | st.integers() | huge_ints,
    timestamps | st.none(),
    st.dictionaries(st.text(max_size=10), json_scalars, max_size=8),
    json_scalars,
)
def test_plausible_events(id_: object, ts: object, features: dict, label: object) -> None:
    check(to_json({"id": id_, "ts": ts, "features": features, "label": label}))


VALID = orjson.dumps(
    {"id": "e1", "ts": 1_795_687_200_000, "key": "k", "features": {"a": 1.5, "b": "FR"}, "label": 1}
)


@PROPERTY
@given(
    st.integers(min_value=0, max_value=len(VALID)),
    st.binary(min_size=1, max_size=6),
    st.booleans(),
)
def test_bytes_inserted_or_overwritten_in_a_valid_event(at: int, junk: bytes, insert: bool) -> None:
    raw = VALID[:at] + junk + VALID[at + (0 if insert else len(junk)) :]
    check(raw)


INVALID_UTF8 = st.sampled_from(
    [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xc0\xaf"]
)


@PROPERTY
@given(st.sampled_from([b'e1"', b'k"', b'a"', b'FR"', b'label"']), INVALID_UTF8)
def test_invalid_utf8_in_any_string_is_bad_encoding(anchor: bytes, bad: bytes) -> None:
    at = VALID.index(anchor)
    try:
        DECODER.decode(VALID[:at] + bad + VALID[at:])
    except InvalidEvent as exc:
        assert exc.reason == "bad_encoding"
    else:
        raise AssertionError("invalid UTF-8 was accepted")


@PROPERTY
@given(
    st.dictionaries(st.text(max_size=6), json_scalars, min_size=1, max_size=5),
    st.data(),
)
def test_duplicate_keys_are_refused(features: dict, data: st.DataObject) -> None:
    pairs = [json.dumps(k) + ": " + json.dumps(v) for k, v in features.items()]
    dup = data.draw(st.sampled_from(list(features)))
    again = json.dumps(dup) + ": " + json.dumps(data.draw(json_scalars))
    pairs.insert(data.draw(st.integers(0, len(pairs))), again)
    raw = ('{"id": "e1", "features": {' + ", ".join(pairs) + "}}").encode("utf-8", "surrogatepass")
    try:
        DECODER.decode(raw)
    except InvalidEvent as exc:
        assert exc.reason in INVALID_REASONS
    else:
        raise AssertionError("a duplicate key was accepted")


@PROPERTY
@given(st.integers(min_value=1, max_value=3000), st.sampled_from("[{"))
def test_deep_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth if opener == "[" else '{"a":' * depth
    body = inner + ("1" if opener == "{" else "") + closer * depth
    check(('{"id": "e1", "features": {}, "other": ' + body + "}").encode())


@PROPERTY
@given(st.integers(min_value=MAX_BYTES - 64, max_value=MAX_BYTES * 4))
def test_oversized(size: int) -> None:
    check(b'{"id": "e1", "features": {"x": "' + b"y" * size + b'"}}')
