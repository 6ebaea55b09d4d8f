"""Event decoding and validation: every malformed kind gets its reason."""

from __future__ import annotations

import orjson
import pytest

from livelearn import InvalidEvent
from livelearn.settings import EventSettings
from livelearn.stream import EventDecoder


@pytest.fixture
def decoder() -> EventDecoder:
    return EventDecoder(EventSettings(max_bytes=512), label_fields=["label"])


def test_a_valid_event_keeps_its_fields_in_order(decoder) -> None:
    raw = orjson.dumps(
        {
            "id": "e1",
            "ts": "2026-11-26T10:00:00Z",
            "key": "k",
            "label": 3.5,
            "features": {"b": 1, "a": "FR", "c": None, "d": True},
        }
    )
    event = decoder.decode(raw)
    assert event.id == "e1" and event.key == "k" and event.ts_ms == 1795687200000
    assert list(event.features) == ["b", "a", "c", "d"]
    assert event.fields["label"] == 3.5


def test_integer_ids_and_missing_optional_fields_are_accepted(decoder) -> None:
    event = decoder.decode(b'{"id": 7, "features": {}}')
    assert (event.id, event.ts_ms, event.key, event.fields.get("label")) == ("7", None, None, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{oops", "not_json"),
        (b"\xff\xfe", "not_json"),
        (None, "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"text"', "not_object"),
        (b'{"features": {}}', "missing_field"),
        (b'{"id": "a"}', "missing_field"),
        (b'{"id": 1.5, "features": {}}', "wrong_type"),
        (b'{"id": "a", "features": [1]}', "wrong_type"),
        (b'{"id": "a", "features": {"x": {"y": 1}}}', "wrong_type"),
        (b'{"id": "a", "features": {}, "label": [true]}', "wrong_type"),
        (b'{"id": "a", "features": {}, "key": 5}', "wrong_type"),
        (b'{"id": "a", "features": {"x": NaN}}', "non_finite"),
        (b'{"id": "a", "features": {"x": -Infinity}}', "non_finite"),
        (b'{"id": "a", "features": {"x": 1e400}}', "non_finite"),
        (b'{"id": "a", "features": {}, "label": NaN}', "non_finite"),
        (b'{"id": "a", "ts": "not a time", "features": {}}', "bad_timestamp"),
        (b'{"id": "a", "ts": "2026-11-26T10:00:00", "features": {}}', "bad_timestamp"),
        (b'{"id": "a", "ts": 1.5, "features": {}}', "bad_timestamp"),
        (b'{"id": "a", "features": {"x": "' + b"y" * 600 + b'"}}', "too_large"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_malformed_kind_has_its_reason(decoder, raw, reason) -> None:
    with pytest.raises(InvalidEvent) as info:
        decoder.decode(raw)
    assert info.value.reason == reason
    assert info.value.detail


def test_configured_field_names_are_used() -> None:
    settings = EventSettings(id_field="event_id", features_field="x", ts_field="time")
    decoder = EventDecoder(settings, label_fields=["target"])
    event = decoder.decode(b'{"event_id": "z", "time": 5, "x": {"a": 1}, "target": "cat"}')
    assert (event.id, event.ts_ms, event.features, event.fields["target"]) == (
        "z",
        5,
        {"a": 1},
        "cat",
    )
