"""A catalogue of hostile Kafka record values, each with the dead-letter reasons it may get.

Shared by tests/unit/test_worker_properties.py (drawn by hypothesis) and
tests/integration/test_hostile_stream.py (a few of each kind on real servers). A kind
turns a valid contract event into a hostile record value with a ``random.Random``, so
that both tests build the same kinds from a seed.

The ``model_error`` kinds (a string or a null feature) assume a pipeline that does
arithmetic on every feature, as ``preprocessing.StandardScaler`` does.

>>> kind = {k.name: k for k in hostile_kinds("binary")}["dup_feature_key"]
>>> sorted(kind.reasons)
['duplicate_key']
>>> kind.make(random.Random(0), {"id": "e1", "features": {"a": 1.0}, "label": True})
b'{"id": "e1", "features": {"a": 2, "a": 1.0}, "label": true}'
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livelearn.stream.decode import INVALID_REASONS

# Every reason the README documents for a dead letter.
DOCUMENTED_REASONS = frozenset(INVALID_REASONS) | {"bad_label", "model_error", "decode_error"}

# The worker's clock is the real one: these are far enough from it either way.
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
HUGE = 10**400
# Past CPython's limit on the digits of an int parsed from text (sys.int_info).
MANY_DIGITS = "9" * 5000
INVALID_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc3\x28",
    b"\xc0\xaf",  # an overlong "/"
    b"\xed\xa0\x80",  # a surrogate encoded as UTF-8
    b"\xe2\x82",  # a truncated sequence
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf8\x88\x80\x80\x80",
)
LONE_SURROGATES = ("\\ud800", "\\udfff", "\\ud83d\\u0041", "\\udc00\\ud800")
_MARK = "@@MARK@@"

Event = dict[str, Any]
Make = Callable[[random.Random, Event], "bytes | None"]


@dataclass(frozen=True)
class Kind:
    """One way to spoil an event, and the dead-letter reasons the record may get.

    A kind that ``decodes`` makes a valid contract event that a model may still fail on
    (a string feature): it is dead-lettered (``model_error``) exactly when River's own
    loop raises on it, which depends on the model's state (River's scaler ignores a
    feature it has seen no variance of while predicting).
    """

    name: str
    reasons: frozenset[str]
    make: Make
    decodes: bool = False


def dumps(obj: Any, rng: random.Random | None = None) -> bytes:
    """JSON as a careless producer writes it: NaN, Infinity and any integer allowed,
    escaped or raw UTF-8, compact or spaced (chosen by ``rng``)."""
    ascii_only = rng is None or rng.random() < 0.5
    seps = (", ", ": ") if rng is None or rng.random() < 0.5 else (",", ":")
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True, separators=seps)
    return text.encode("utf-8", "surrogatepass")


def render_valid(rng: random.Random, event: Event) -> bytes:
    """A valid event with the optional parts a producer may add: a key, a time in one of
    its forms, unknown fields (nested), the top-level keys in any order."""
    out = dict(event)
    roll = rng.random()
    if roll < 0.2:
        out["ts"] = None
    elif roll < 0.4:
        out["ts"] = f"20{rng.randrange(10, 25)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T"
        out["ts"] += f"0{rng.randrange(10)}:30:00{rng.choice(['Z', '+14:00', '-12:00', '+00:00'])}"
    elif roll < 0.5:
        out.pop("ts", None)
    if rng.random() < 0.3:
        out["key"] = rng.choice([None, "k", "\u00e9", "a,b", ""])
    if rng.random() < 0.3:
        out["meta"] = rng.choice(
            [
                {"nested": [1, 2, {"x": None, "y": [True, "s"]}], "n": 10**30},
                [[[[]]], {}, "\u002c", -1.5e300],
                "a string, with commas",
            ]
        )
    keys = list(out)
    rng.shuffle(keys)
    return dumps({k: out[k] for k in keys}, rng)


def _with(event: Event, **changes: Any) -> Event:
    return {**event, **changes}


def _feature(event: Event, name: str, value: Any) -> Event:
    return {**event, "features": {**event["features"], name: value}}


def _marked(rng: random.Random, event: Event, where: str) -> bytes:
    """``event`` rendered ASCII-only with ``_MARK`` inside the string at ``where``:
    id, key, ts, label, feature_name, feature_value, unknown_name or unknown_value."""
    changes: dict[str, Any] = {
        "id": {"id": f"e{_MARK}"},
        "key": {"key": f"k{_MARK}"},
        "ts": {"ts": f"2020-01-01T00:00:00{_MARK}Z"},
        "label": {"label": f"l{_MARK}"},
        "feature_name": {"features": {**event["features"], f"f{_MARK}": 1.0}},
        "feature_value": {"features": {**event["features"], "f": f"v{_MARK}"}},
        "unknown_name": {f"u{_MARK}": 1},
        "unknown_value": {"u": {"deep": [f"v{_MARK}"]}},
    }[where]
    return json.dumps({**event, **changes}, ensure_ascii=True).encode()


_STRING_PLACES = (
    "id",
    "key",
    "ts",
    "label",
    "feature_name",
    "feature_value",
    "unknown_name",
    "unknown_value",
)


def _invalid_utf8(rng: random.Random, event: Event) -> bytes:
    raw = _marked(rng, event, rng.choice(_STRING_PLACES))
    return raw.replace(_MARK.encode(), rng.choice(INVALID_UTF8))


def _lone_surrogate(rng: random.Random, event: Event) -> bytes:
    raw = _marked(rng, event, rng.choice(_STRING_PLACES))
    return raw.replace(_MARK.encode(), rng.choice(LONE_SURROGATES).encode())


def _raw_control(rng: random.Random, event: Event) -> bytes:
    raw = _marked(rng, event, rng.choice(("id", "feature_name", "feature_value")))
    return raw.replace(_MARK.encode(), rng.choice([b"\x00", b"\n", b"\x1f", b"\t"]))


def _random_bytes(rng: random.Random, event: Event) -> bytes:
    # A first byte no JSON document starts with, so the record can never be valid.
    first = rng.choice(b"\x00\x01\x7f\xfe\xff!#%&'()*+/:;<=>?@\\^`|~")
    return bytes([first]) + rng.randbytes(rng.randrange(0, 200))


def _truncated(rng: random.Random, event: Event) -> bytes:
    raw = json.dumps(event, ensure_ascii=True).encode()
    return raw[: rng.randrange(1, len(raw) - 1)]


def _dup_raw(rng: random.Random, event: Event, where: str) -> bytes:
    """Raw JSON text with a key written twice (json.dumps cannot write one)."""
    body = json.dumps(event)[:-1]  # the object without its closing brace
    if where == "top":
        field = rng.choice(["id", "features", "label"])
        return f"{body}, {json.dumps(field)}: {json.dumps(event[field])}}}".encode()
    if where == "feature":
        features = dict(event["features"]) or {"a": 1.0}
        name = rng.choice(sorted(features))
        pairs = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in features.items()]
        spelled = rng.choice([json.dumps(name), json.dumps(name, ensure_ascii=False)])
        pairs.insert(rng.randrange(len(pairs) + 1), f"{spelled}: 2")
        raw = json.dumps({**event, "features": _MARK})
        return raw.replace(f'"{_MARK}"', "{" + ", ".join(pairs) + "}").encode()
    if where == "escaped":  # the same key, once spelled with \u escapes
        return f'{body}, "u": {{"a,": 1, "a\\u002c": 2}}}}'.encode()
    return f'{body}, "u": {{"x": [{{"k": 1, "k": 1}}]}}}}'.encode()


def _deep(rng: random.Random, event: Event, where: str) -> bytes:
    # Far past any recursion limit: 1000 by default, and hypothesis raises it to about
    # 2000 plus the caller's depth while a property runs.
    depth = rng.randrange(5000, 9000)
    nested = rng.choice(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])
    if where == "unclosed":
        return (json.dumps(event)[:-1] + ', "u": ' + "[" * depth).encode()
    if where == "feature":
        return json.dumps(_feature(event, "f", _MARK)).replace(f'"{_MARK}"', nested).encode()
    return (json.dumps(event)[:-1] + f', "u": {nested}}}').encode()


def _too_large(max_bytes: int) -> Make:
    def make(rng: random.Random, event: Event) -> bytes:
        pad = "p" * rng.randrange(max_bytes + 1, max_bytes * 2)
        spoiled = rng.choice([_feature(event, "pad", pad), _with(event, u=pad)])
        return dumps(spoiled, rng)

    return make


def _edit(**kwargs: Callable[[random.Random, Event], Any]) -> Make:
    """A kind that replaces one top-level field by a value drawn from its choices."""
    ((field, choose),) = kwargs.items()

    def make(rng: random.Random, event: Event) -> bytes:
        return dumps(_with(event, **{field: choose(rng, event)}), rng)

    return make


def _set_feature(*values: Any) -> Make:
    def make(rng: random.Random, event: Event) -> bytes:
        return dumps(_feature(event, rng.choice(["x", "new"]), rng.choice(values)), rng)

    return make


def _raw_number(field: str, *literals: str) -> Make:
    """A number JSON cannot hold (NaN, Infinity, 1e999, 5000 digits) as ``field``: a
    feature, the label, the time, the id, or an unknown field."""

    def make(rng: random.Random, event: Event) -> bytes:
        target = (
            _feature(event, "f", _MARK) if field == "feature" else _with(event, **{field: _MARK})
        )
        return dumps(target, rng).replace(f'"{_MARK}"'.encode(), rng.choice(literals).encode())

    return make


def _choice(*values: Any) -> Callable[[random.Random, Event], Any]:
    return lambda rng, event: rng.choice(values)


def _without(field: str) -> Make:
    return lambda rng, event: dumps({k: v for k, v in event.items() if k != field}, rng)


_BAD_LABELS: dict[str, tuple[Any, ...]] = {
    "binary": (0.5, 2, -1, 1.0, 0.0, "yes", "true", "", HUGE, 2**63),
    "multiclass": (1.5, 0.0, -1e300, 2.5e-8),
    "regression": (True, False, "3.2", "", "NaN", HUGE, -HUGE),
}


def _catalogue(task: str, max_bytes: int) -> list[Kind]:
    def kind(name: str, reasons: str | set[str], make: Make, decodes: bool = False) -> Kind:
        wanted = {reasons} if isinstance(reasons, str) else reasons
        assert wanted <= DOCUMENTED_REASONS, wanted
        return Kind(name, frozenset(wanted), make, decodes)

    return [
        # not JSON at all
        kind("random_bytes", "not_json", _random_bytes),
        kind("tombstone", "not_json", lambda rng, event: None),
        kind("empty_value", "not_json", lambda rng, event: rng.choice([b"", b" ", b"\n\t "])),
        kind("truncated", "not_json", _truncated),
        kind(
            "trailing_garbage", "not_json", lambda r, e: dumps(e, r) + r.choice([b" x", b"}", b","])
        ),
        kind("two_documents", "not_json", lambda r, e: dumps(e, r) + dumps(e, r)),
        kind("raw_control_char", "not_json", _raw_control),
        kind(
            "utf16", "not_json", lambda r, e: json.dumps(e).encode(r.choice(["utf-16", "utf-32"]))
        ),
        kind("bom", "not_json", lambda r, e: b"\xef\xbb\xbf" + dumps(e, r)),
        kind("python_repr", "not_json", lambda r, e: repr(e).encode()),
        kind("comment", "not_json", lambda r, e: b"// note\n" + dumps(e, r)),
        # JSON of the wrong shape
        kind(
            "not_object", "not_object", _choice(b"[1, 2]", b'"e1"', b"3", b"null", b"true", b"[]")
        ),
        kind("missing_id", "missing_field", _without("id")),
        kind("missing_features", "missing_field", _without("features")),
        kind("empty_object", "missing_field", lambda rng, event: b"{}"),
        kind("id_wrong_type", "wrong_type", _edit(id=_choice(1.5, True, None, [], {}))),
        kind("features_wrong_type", "wrong_type", _edit(features=_choice(None, [], "x", 3, True))),
        kind("feature_nested", "wrong_type", _set_feature({"b": 1}, [1, 2], [], {})),
        kind("key_wrong_type", "wrong_type", _edit(key=_choice(3, {}, [], True, 1.5))),
        kind("label_wrong_type", "wrong_type", _edit(label=_choice([1], {"y": 1}, []))),
        # numbers
        kind(
            "feature_non_finite", "non_finite", _raw_number("feature", "NaN", "Infinity", "-1e999")
        ),
        kind("label_non_finite", "non_finite", _raw_number("label", "NaN", "-Infinity", "1e999")),
        kind("unknown_field_non_finite", "non_finite", _raw_number("u", "NaN", "Infinity")),
        kind("ts_nan", "non_finite", _raw_number("ts", "NaN")),
        kind("feature_int_over_64_bits", "out_of_range", _set_feature(2**63, -(2**63) - 1, HUGE)),
        kind(
            "int_over_4300_digits",
            "out_of_range",
            _raw_number("feature", MANY_DIGITS, "-" + MANY_DIGITS),
        ),
        kind("label_over_4300_digits", "out_of_range", _raw_number("label", MANY_DIGITS)),
        kind("id_over_4300_digits", "out_of_range", _raw_number("id", MANY_DIGITS)),
        # time
        kind("ts_huge", "bad_timestamp", _edit(ts=_choice(HUGE, -HUGE, 2**64))),
        kind("ts_negative", "bad_timestamp", _edit(ts=_choice(-1, -1_000, "1969-12-31T23:59:59Z"))),
        kind(
            "ts_far_future",
            "bad_timestamp",
            _edit(ts=_choice(FAR_FUTURE_MS, "9999-12-31T23:59:59-14:00", "2100-01-01T00:00:00Z")),
        ),
        kind(
            "ts_garbage",
            "bad_timestamp",
            _edit(
                ts=_choice("yesterday", "", "1700000000000", "2026-11-26T10:00:00", "99999-01-01")
            ),
        ),
        kind("ts_wrong_type", "bad_timestamp", _edit(ts=_choice(1.5, True, {}, []))),
        kind("ts_overflow", "bad_timestamp", _raw_number("ts", "1e999", "-1e999")),
        # text
        kind("invalid_utf8", "bad_encoding", _invalid_utf8),
        kind("lone_surrogate", "bad_encoding", _lone_surrogate),
        # structure
        kind("dup_top_level_key", "duplicate_key", lambda r, e: _dup_raw(r, e, "top")),
        kind("dup_feature_key", "duplicate_key", lambda r, e: _dup_raw(r, e, "feature")),
        kind("dup_escaped_key", "duplicate_key", lambda r, e: _dup_raw(r, e, "escaped")),
        kind("dup_nested_key", "duplicate_key", lambda r, e: _dup_raw(r, e, "nested")),
        kind("deep_unknown_field", "too_deep", lambda r, e: _deep(r, e, "unknown")),
        kind("deep_unclosed", "too_deep", lambda r, e: _deep(r, e, "unclosed")),
        # msgspec stops at the first array or object where a scalar belongs
        kind("deep_feature", "wrong_type", lambda r, e: _deep(r, e, "feature")),
        kind("too_large", "too_large", _too_large(max_bytes)),
        # decodes, but the model cannot take it
        kind("bad_label", "bad_label", _edit(label=_choice(*_BAD_LABELS[task])), decodes=True),
        kind(
            "string_feature",
            "model_error",
            _set_feature("abc", "NaN", "", "1.5", "Infinity"),
            decodes=True,
        ),
        kind("null_feature", "model_error", _set_feature(None), decodes=True),
    ]


def hostile_kinds(task: str, max_bytes: int = 65_536) -> list[Kind]:
    """Every hostile kind for a model of ``task`` reading events of at most ``max_bytes``
    (``events.max_bytes``); the bad labels depend on the task."""
    return _catalogue(task, max_bytes)
