"""Hostile records: invalid UTF-8, duplicate keys, huge numbers, deep nesting, odd times."""

from __future__ import annotations

import pytest

from livelearn import InvalidEvent
from livelearn.settings import EventSettings
from livelearn.stream import EventDecoder

NOW_S = 1_795_687_200.0  # 2026-11-26T10:00:00Z
NOW_MS = int(NOW_S * 1000)


def make_decoder(**settings) -> EventDecoder:
    return EventDecoder(EventSettings(**settings), label_fields=["label"], clock=lambda: NOW_S)


def event(body: bytes) -> bytes:
    return b'{"id": "a", ' + body + b"}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "a\xff", "features": {}}', "bad_encoding"),
        (event(b'"key": "\xc3\x28", "features": {}'), "bad_encoding"),
        (event(b'"features": {"\xff": 1}'), "bad_encoding"),
        (event(b'"features": {"x": "\xed\xa0\x80"}'), "bad_encoding"),
        (event(b'"features": {}, "label": "\xf8\x88\x80\x80\x80"'), "bad_encoding"),
        (event(b'"features": {}, "other": "\xfe"'), "bad_encoding"),
        (event(b'"features": {}, "\xff": 1'), "bad_encoding"),
        (event(b'"features": {"x": "\\ud800"}'), "bad_encoding"),
        (event(b'"features": {"x": 1, "x": "one"}'), "duplicate_key"),
        (event(b'"features": {"x": "a,b", "x": 1}'), "duplicate_key"),
        (event(b'"features": {"x": 1, "x": "\\u002c"}'), "duplicate_key"),
        (event(b'"features": {}, "features": {"x": "s"}'), "duplicate_key"),
        (event(b'"features": {}, "label": true, "label": "yes"'), "duplicate_key"),
        (event(b'"features": {}, "meta": {"a": 1, "a": 2}'), "duplicate_key"),
        (event(b'"features": {"x": ' + b"1" * 401 + b"}"), "out_of_range"),
        (event(b'"features": {"x": 9223372036854775808}'), "out_of_range"),
        (event(b'"features": {"x": -9223372036854775809}'), "out_of_range"),
        (event(b'"features": {}, "label": ' + b"9" * 5000), "out_of_range"),
        (event(b'"features": {}, "other": ' + b"9" * 5000), "out_of_range"),
        (event(b'"features": {}, "other": 1e400'), "non_finite"),
        (event(b'"features": {}, "deep": ' + b"[" * 5000 + b"]" * 5000), "too_deep"),
        (event(b'"features": {}, "deep": ' + b"[" * 5000), "too_deep"),
        (event(b'"ts": -1, "features": {}'), "bad_timestamp"),
        (event(b'"ts": ' + b"1" * 401 + b', "features": {}'), "bad_timestamp"),
        (event(b'"ts": ' + b"1" * 5000 + b', "features": {}'), "bad_timestamp"),
        (event(b'"ts": "1969-12-31T23:59:59Z", "features": {}'), "bad_timestamp"),
        (event(b'"ts": "9999-12-31T23:59:59Z", "features": {}'), "bad_timestamp"),
        (
            event(b'"ts": ' + str(NOW_MS + 86_400_001).encode() + b', "features": {}'),
            "bad_timestamp",
        ),
    ],
    ids=[
        "utf8-id",
        "utf8-key",
        "utf8-feature-name",
        "utf8-encoded-surrogate",
        "utf8-label",
        "utf8-unknown-field",
        "utf8-unknown-key",
        "escaped-lone-surrogate",
        "dup-feature-last-string",
        "dup-feature-comma-in-string",
        "dup-feature-escaped-comma",
        "dup-features",
        "dup-label",
        "dup-in-unknown-field",
        "int-10e400-feature",
        "int-2e63-feature",
        "int-below-int64-feature",
        "int-5000-digits-label",
        "int-5000-digits-unknown",
        "inf-unknown-field",
        "deep-nesting",
        "deep-unclosed",
        "ts-negative",
        "ts-10e400",
        "ts-5000-digits",
        "ts-before-1970",
        "ts-year-9999",
        "ts-just-over-a-day-ahead",
    ],
)
def test_each_hostile_kind_has_its_reason(raw, reason) -> None:
    with pytest.raises(InvalidEvent) as info:
        make_decoder().decode(raw)
    assert info.value.reason == reason
    assert info.value.detail


@pytest.mark.parametrize(
    "raw",
    [
        event(b'"features": {"city": "Paris, France", "n": 2}'),
        event(b'"features": {"x": "\\u002c"}'),
        event(b'"features": {"x": 9223372036854775807, "y": -9223372036854775808}'),
        event(b'"features": {}, "meta": {"a": [1, 2, {"b": "c,d"}]}, "source": "x"'),
        event(b'"features": {"caf\xc3\xa9": "\xe2\x82\xac"}, "note": "\xf0\x9f\x98\x80"'),
        event(b'"ts": 0, "features": {}'),
        event(b'"ts": ' + str(NOW_MS + 86_400_000).encode() + b', "features": {}'),
        event(b'"ts": "2000-01-01T00:00:00+02:00", "features": {}'),
        event(b'"features": {}, "label": ' + b"1" * 401),  # a label is checked per task
    ],
    ids=[
        "comma-in-string",
        "escaped-comma",
        "int64-bounds",
        "unknown-fields",
        "non-ascii",
        "ts-epoch",
        "ts-a-day-ahead",
        "ts-2000",
        "huge-int-label",
    ],
)
def test_valid_events_stay_valid(raw) -> None:
    make_decoder().decode(raw)


def test_the_age_window_is_a_setting() -> None:
    decoder = make_decoder(ts_max_age_days=1, ts_max_future_s=0)
    assert decoder.decode(event(b'"ts": %d, "features": {}' % (NOW_MS - 86_400_000))).ts_ms
    for ts in (NOW_MS - 86_400_001, NOW_MS + 1):
        with pytest.raises(InvalidEvent) as info:
            decoder.decode(event(b'"ts": %d, "features": {}' % ts))
        assert info.value.reason == "bad_timestamp"
        assert "events.ts_max_" in info.value.detail


def test_a_key_and_labels_left_out_are_none() -> None:
    decoder = EventDecoder(EventSettings(), label_fields=["label", "key", "y"])
    decoded = decoder.decode(b'{"id": "a", "features": {}, "y": null}')
    assert (decoded.key, decoded.ts_ms, decoded.fields) == (
        None,
        None,
        {"label": None, "key": None, "y": None},
    )
