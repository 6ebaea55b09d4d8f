"""A refused record's reason is livelearn's: the same whatever msgspec raises or says, with
the precedence stream/decode.py documents when a record has several faults."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livelearn import InvalidEvent
from livelearn.settings import EventSettings
from livelearn.stream import EventDecoder
from tests.unit import test_decode_properties as props

NOW_S = 1_795_687_200.0  # 2026-11-26T10:00:00Z
DEEP = b"[" * 5000 + b"]" * 5000
LONG_INT = b"9" * 5000


class Refusing:
    """A msgspec decoder that refuses every record with ``exc``, whatever is wrong with it."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def decode(self, value: bytes) -> object:
        raise self.exc


def make_decoder(refusal: BaseException | None = None, **kwargs) -> EventDecoder:
    """A decoder with today's msgspec, or with one that refuses every record with ``refusal``."""
    decoder = EventDecoder(
        EventSettings(max_bytes=65_536), label_fields=["label"], clock=lambda: NOW_S, **kwargs
    )
    if refusal is not None:
        decoder._decoder = Refusing(refusal)  # type: ignore[assignment]
    return decoder


# A future msgspec that words its errors otherwise, or flags a fault other than livelearn.
BOGUS = {
    "decode-error": msgspec.DecodeError("Invalid UTF-8 encoded string"),
    "validation-error": msgspec.ValidationError("Object missing required field `id` - at `$`"),
    "range-error": msgspec.ValidationError("Integer value out of range - at `$.ts`"),
    "unicode-error": UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    "value-error": ValueError("something else"),
}


def event(body: bytes) -> bytes:
    return b'{"id": "a", ' + body + b"}"


CASES = [
    # (id, record, reason, a piece of the detail)
    ("tombstone", None, "not_json", "tombstone"),
    ("too-large-first", b"\xff" * 70_000, "too_large", "events.max_bytes"),
    ("bytes-after-the-document", event(b'"features": {}') + b"\xff", "not_json", "JSON"),
    ("utf16", '{"id": "a", "features": {}}'.encode("utf-16"), "not_json", "JSON"),
    ("syntax-before-encoding", b'{"id": "a\xff", "features": {}', "not_json", "JSON"),
    ("nan-is-no-syntax-fault", event(b'"features": {"x": NaN}'), "non_finite", "$.features.x"),
    ("syntax-after-nan", event(b'"features": {"x": NaN'), "not_json", "JSON"),
    ("encoding-in-id", b'{"id": "a\xff", "features": {}}', "bad_encoding", "$.id"),
    ("encoding-before-type", b'{"id": "a\xff", "features": []}', "bad_encoding", "$.id"),
    ("type-before-encoding", b'{"features": [], "id": "a\xff"}', "wrong_type", "$.features"),
    ("encoding-in-key", event(b'"features": {"\xc3\x28": 1}'), "bad_encoding", "a key in"),
    ("encoding-shows-bytes", event(b'"features": {}, "u": "\xe2\x82"'), "bad_encoding", "\\xe2"),
    ("lone-surrogate", event(b'"features": {}, "u": ["\\udc00"]'), "bad_encoding", "$.u[0]"),
    (
        "dup-at-second-key",
        event(b'"features": {}, "u": {"k": 1, "k": NaN}'),
        "duplicate_key",
        "$.u",
    ),
    ("nan-before-dup", event(b'"features": {}, "u": {"k": NaN, "k": 1}'), "non_finite", "$.u.k"),
    ("dup-top-level", event(b'"features": {}, "id": "b"'), "duplicate_key", "'id'"),
    ("nan-as-ts", event(b'"ts": NaN, "features": {}'), "non_finite", "$.ts"),
    ("inf-as-ts", event(b'"ts": 1e999, "features": {}'), "bad_timestamp", "1e999"),
    ("inf-as-id", b'{"id": -1e999, "features": {}}', "wrong_type", "$.id"),
    ("inf-as-label", event(b'"features": {}, "label": 1e999'), "non_finite", "$.label"),
    ("inf-unknown", event(b'"features": {}, "u": [1, 1e400]'), "non_finite", "$.u[1]"),
    ("long-int-as-ts", event(b'"ts": ' + LONG_INT + b', "features": {}'), "bad_timestamp", "5000"),
    ("long-int-as-id", b'{"id": ' + LONG_INT + b', "features": {}}', "out_of_range", "$.id"),
    ("long-int-as-key", event(b'"key": ' + LONG_INT + b', "features": {}'), "wrong_type", "$.key"),
    ("long-int-as-label", event(b'"features": {}, "label": -' + LONG_INT), "out_of_range", "5001"),
    ("int65-feature", event(b'"features": {"x": -9223372036854775809}'), "out_of_range", "64-bit"),
    ("huge-int-as-ts", event(b'"ts": ' + b"1" * 401 + b', "features": {}'), "bad_timestamp", "401"),
    ("container-unread", event(b'"features": {"x": [NaN, "\xff"]}'), "wrong_type", "$.features.x"),
    ("deep-feature", event(b'"features": {"f": ' + DEEP + b"}"), "wrong_type", "$.features.f"),
    ("deep-unknown", event(b'"features": {}, "u": ' + DEEP), "too_deep", "$.u[0]"),
    ("deep-unclosed", event(b'"features": {}, "u": ' + b'{"a": ' * 5000), "too_deep", "$.u.a"),
    ("syntax-before-deep", b'{"id": "a" "u": ' + b"[" * 5000, "not_json", "JSON"),
    ("fault-before-deep", b'{"id": 1.5, "features": {}, "u": ' + DEEP + b"}", "wrong_type", "1.5"),
    ("deep-before-fault", event(b'"u": ' + DEEP + b', "features": [NaN]'), "too_deep", "$.u"),
    ("ts-window-before-missing", b'{"ts": -1, "features": {}}', "bad_timestamp", "1970"),
    ("ts-before-type", event(b'"ts": "yesterday", "features": {"x": [1]}'), "bad_timestamp", "ISO"),
    (
        "type-before-ts",
        event(b'"features": {"x": [1]}, "ts": "yesterday"'),
        "wrong_type",
        "$.features.x",
    ),
    ("ts-type", event(b'"ts": true, "features": {}'), "bad_timestamp", "a boolean (true)"),
    ("missing-last", b'{"features": {"x": {}}}', "wrong_type", "$.features.x is an object"),
    ("missing-id", b'{"features": {}}', "missing_field", "'id'"),
    ("missing-features", b'{"id": "a", "label": true}', "missing_field", "'features'"),
    ("null-id", b'{"id": null, "features": {}}', "wrong_type", "$.id is null"),
    ("bool-id", b'{"id": false, "features": {}}', "wrong_type", "a boolean (false)"),
    ("key-not-string", event(b'"features": {}, "key": 5'), "wrong_type", "$.key is an integer (5)"),
    ("label-not-scalar", event(b'"features": {}, "label": {"a": NaN}'), "wrong_type", "$.label"),
    ("features-null", event(b'"features": null'), "wrong_type", "$.features is null"),
    ("top-level-nan", b"NaN", "not_object", "NaN"),
    ("top-level-array", b'[NaN, "\xff"]', "not_object", "an array"),
    ("odd-key-in-path", event(b'"features": {"a b": "\xff"}'), "bad_encoding", "$.features['a b']"),
]


@pytest.fixture(params=["msgspec", "decode-error", "validation-error"])
def decoder(request) -> EventDecoder:
    return make_decoder(BOGUS.get(request.param))


@pytest.mark.parametrize(
    ("raw", "reason", "shown"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_record_has_livelearns_reason(decoder, raw, reason, shown) -> None:
    with pytest.raises(InvalidEvent) as info:
        decoder.decode(raw)
    assert (info.value.reason, shown in info.value.detail) == (reason, True), info.value.detail


@pytest.mark.parametrize("refusal", sorted(BOGUS))
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (event(b'"features": {"x": 1, "x": 2}'), "duplicate_key"),
        (event(b'"features": {"x": "\\ud800"}'), "bad_encoding"),
        (event(b'"ts": "2026-11-26T10:00:00", "features": {}'), "bad_timestamp"),
        (event(b'"features": {"x": Infinity}'), "non_finite"),
        (b'{"id": "a", "features": {"x": 1}', "not_json"),
    ],
    ids=["dup", "surrogate", "ts-no-zone", "infinity", "unclosed"],
)
def test_msgspecs_exception_and_wording_are_not_read(refusal, raw, reason) -> None:
    with pytest.raises(InvalidEvent) as info:
        make_decoder(BOGUS[refusal]).decode(raw)
    assert info.value.reason == reason


@pytest.mark.parametrize("refusal", sorted(BOGUS))
def test_the_whole_record_check_takes_livelearns_reason_too(monkeypatch, refusal) -> None:
    def refuse(value: bytes) -> object:
        raise BOGUS[refusal]

    decoder = make_decoder()
    # Faults in a field no model reads, which the struct decode may skip: then the generic
    # decode of the whole record is the one that refuses.
    monkeypatch.setattr(msgspec.json, "decode", refuse)
    for raw, reason in [
        (event(b'"features": {}, "u": {"k": 1, "k": 2}'), "duplicate_key"),
        (event(b'"features": {}, "u": "\xff"'), "bad_encoding"),
        (event(b'"features": {}, "u": [NaN]'), "non_finite"),
        (event(b'"features": {}, "u": ' + LONG_INT), "out_of_range"),
    ]:
        with pytest.raises(InvalidEvent) as info:
            decoder.decode(raw)
        assert info.value.reason == reason, raw[:60]


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (msgspec.ValidationError("a fault livelearn has no name for"), "not_json"),
        (RecursionError("maximum recursion depth exceeded"), "too_deep"),
    ],
    ids=["validation-error", "recursion-error"],
)
def test_a_refusal_livelearn_finds_no_fault_for_has_a_defined_reason(refusal, reason) -> None:
    with pytest.raises(InvalidEvent) as info:
        make_decoder(refusal).decode(event(b'"features": {"x": 1.5}'))
    assert info.value.reason == reason
    assert "livelearn found no fault" in info.value.detail


@pytest.mark.parametrize("refusal", ["msgspec", "validation-error"])
def test_a_label_only_decoder_judges_missing_features_last(refusal) -> None:
    decoder = make_decoder(BOGUS.get(refusal), label_only=True)
    for raw, reason in [
        (event(b'"key": 5'), "wrong_type"),
        (event(b'"label": null'), "missing_field"),
        (event(b'"label": [true]'), "wrong_type"),
        (event(b'"features": null, "label": true'), "wrong_type"),
        (event(b'"ts": -1, "label": null'), "bad_timestamp"),
    ]:
        with pytest.raises(InvalidEvent) as info:
            decoder.decode(raw)
        assert info.value.reason == reason, raw
    assert make_decoder(label_only=True).decode(event(b'"label": true')).features is None


REAL = props.DECODER
REFUSING = EventDecoder(
    EventSettings(max_bytes=props.MAX_BYTES), label_fields=["label", "y"], clock=lambda: NOW_S
)
REFUSING._decoder = Refusing(BOGUS["decode-error"])  # type: ignore[assignment]


def verdict(decoder: EventDecoder, raw: bytes) -> tuple[str, str]:
    try:
        decoder.decode(raw)
    except InvalidEvent as exc:
        return exc.reason, exc.detail
    return "valid", ""


def same_verdict(raw: bytes) -> None:
    """msgspec refuses exactly the records livelearn finds a fault in, for the same reason."""
    real, refused = verdict(REAL, raw), verdict(REFUSING, raw)
    if real[0] == "valid":
        assert refused[0] == "not_json" and "livelearn found no fault" in refused[1], refused
    else:
        assert "livelearn found no fault" not in real[1], real
        assert real[0] == refused[0], (real, refused)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    st.dictionaries(props.field_names, props.json_values, max_size=7),
    st.dictionaries(st.text(max_size=10), props.json_values, max_size=6),
)
def test_msgspec_and_the_diagnosis_agree_on_events(top: dict, features: dict) -> None:
    top.setdefault("id", "e1")
    top.setdefault("features", features)
    same_verdict(props.to_json(top))


@PROPERTY
@given(
    st.text(max_size=10) | st.integers() | props.huge_ints,
    props.timestamps | st.none(),
    st.dictionaries(st.text(max_size=10), props.json_scalars, max_size=8),
    props.json_scalars,
)
def test_msgspec_and_the_diagnosis_agree_on_plausible_events(id_, ts, features, label) -> None:
    same_verdict(props.to_json({"id": id_, "ts": ts, "features": features, "label": label}))


@PROPERTY
@given(
    st.integers(min_value=0, max_value=len(props.VALID)),
    st.binary(min_size=1, max_size=6),
    st.booleans(),
)
def test_msgspec_and_the_diagnosis_agree_on_spoilt_bytes(
    at: int, junk: bytes, insert: bool
) -> None:
    same_verdict(props.VALID[:at] + junk + props.VALID[at + (0 if insert else len(junk)) :])
