"""Why a record is not a valid event, found by livelearn's own reading of it.

``EventDecoder`` (stream/decode.py) decodes with msgspec and asks here only when msgspec
refuses a record. A dead letter's reason is part of livelearn's contract, so it is found
with the standard library alone, never from msgspec's exception types or wording; the
precedence between several faults is the one stream/decode.py documents.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

from livelearn.errors import InvalidEvent

# The longest integer literal taken (sign included), as msgspec takes; Python parses no
# more digits by default (sys.int_info.default_max_str_digits).
MAX_INT_CHARS = 4300
# When the interpreter cannot read a record's nesting, the arrays and objects opened
# deeper than this are cut out and the record is read again.
_CUT_DEPTH = 256
_PATH_STEPS = 8
# A string (closed or not), or a run of opening or of closing brackets: what decides depth.
_SCAN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]+|[\]}]+', re.DOTALL)
_CLOSER = {"[": "]", "{": "}"}
# int() takes any shorter run of digits: 640 is the lowest sys.set_int_max_str_digits allows.
_MANY_DIGITS = re.compile(r"(?<![0-9])[0-9]{640}")


class Layout(NamedTuple):
    """The event's configured field names, and whether ``features`` may be left out."""

    id: str
    ts: str
    key: str
    features: str
    labels: tuple[str, ...]
    label_only: bool


def missing_features(layout: Layout) -> InvalidEvent:
    """The fault of an event without features (and, when allowed, without a label)."""
    if not layout.label_only:
        return InvalidEvent("missing_field", f"an event needs {layout.features!r}")
    return InvalidEvent(
        "missing_field",
        f"an event needs {layout.features!r}, or, as a delayed label, one of "
        f"{', '.join(repr(name) for name in layout.labels)}",
    )


def diagnose(
    value: bytes, layout: Layout, judge_ts: Callable[[int | str], object]
) -> InvalidEvent | None:
    """The first fault of ``value`` as an event, or None if it has none.

    ``judge_ts`` raises ``InvalidEvent`` for an event time (an int or a string) that is
    not ISO-8601 with a zone or is outside the decoder's window.
    """
    try:
        text = value.decode("utf-8")
        invalid_utf8 = False
    except UnicodeDecodeError:
        text = value.decode("utf-8", "surrogateescape")
        invalid_utf8 = True
    try:
        doc = _parse_tolerant(text)
    except RecursionError:
        return InvalidEvent("too_deep", "arrays or objects nested deeper than can be read")
    except ValueError as exc:
        return InvalidEvent("not_json", f"not valid JSON ({exc})")
    try:
        _Reader(layout, judge_ts, invalid_utf8=invalid_utf8).read(doc)
    except InvalidEvent as fault:
        return fault
    return None


class _Number(NamedTuple):
    """A number that JSON or a double cannot hold, kept to be judged where it stands."""

    text: str
    kind: Literal["constant", "infinite", "long"]


class _Object(NamedTuple):
    """A JSON object as its pairs in order, a key written twice kept twice."""

    pairs: list[tuple[str, Any]]


class _Deep:
    """An array or object cut out of the record for nesting too deep."""


_DEEP = _Deep()


class _At(NamedTuple):
    """A place in the record: the place it is in (None: the top level), and the step."""

    outer: _At | None
    step: str | int


def _parse_tolerant(text: str) -> Any:
    """``text`` parsed by the standard library, the faults with a reason of their own kept.

    Invalid UTF-8 inside a string arrives as lone surrogates (``surrogateescape``); NaN,
    infinite numbers and over-long integers as ``_Number``; objects as ``_Object``. Past
    the interpreter's recursion limit, the record is read again with its deepest arrays
    and objects cut out, each replaced by ``_DEEP``.
    """
    try:
        return _parse(text, None)
    except RecursionError:
        marker = _unused_number(text)
        return _parse(_cut_deep(text, marker), marker)


def _parse(text: str, marker: str | None) -> Any:
    def number(literal: str) -> Any:
        if literal == marker:
            return _DEEP
        value = float(literal)
        return _Number(literal, "infinite") if math.isinf(value) else value

    return json.loads(
        text,
        object_pairs_hook=_Object,
        parse_float=number,
        parse_int=_integer if _MANY_DIGITS.search(text) else None,
        parse_constant=_constant,
    )


def _integer(literal: str) -> int | _Number:
    """An integer literal as an int, or as a ``_Number`` when too long to read."""
    if len(literal) > MAX_INT_CHARS:
        return _Number(literal, "long")
    try:
        return int(literal)
    except ValueError:  # sys.set_int_max_str_digits set lower
        return _Number(literal, "long")


def _constant(literal: str) -> _Number:
    """NaN, Infinity or -Infinity, which JSON does not have."""
    return _Number(literal, "constant")


def _unused_number(text: str) -> str:
    """A number literal that ``text`` does not hold, to mark where nesting was cut out."""
    zeros = max(map(len, re.findall("0+", text)), default=0) + 1
    return f"-0.0e-{'0' * zeros}1"


def _cut_deep(text: str, marker: str) -> str:
    """``text`` with each array or object opened deeper than ``_CUT_DEPTH`` replaced by
    ``marker``: up to its end, or to the end of the text (then the ones around it are
    closed)."""
    parts: list[str] = []
    kept = 0  # text[:kept] is in parts
    closers: list[str] = []  # of the arrays and objects open outside a cut
    depth = 0
    cut_from = -1
    for match in _SCAN.finditer(text):
        run = match.group()
        if run[0] == '"':
            continue
        if run[0] in "[{":
            if cut_from < 0:
                room = max(_CUT_DEPTH - depth, 0)
                closers += (_CLOSER[char] for char in run[:room])
                if len(run) > room:
                    cut_from = match.start() + room
            depth += len(run)
            continue
        if cut_from >= 0 and depth - len(run) <= _CUT_DEPTH:
            # the closer that takes the depth back to _CUT_DEPTH ends the cut
            end = match.start() + depth - _CUT_DEPTH
            parts += (text[kept:cut_from], marker)
            kept = end
            cut_from = -1
            outside = match.end() - end
        else:
            outside = 0 if cut_from >= 0 else len(run)
        del closers[max(len(closers) - outside, 0) :]
        depth -= len(run)
    if cut_from >= 0:
        parts += (text[kept:cut_from], marker, *reversed(closers))
        kept = len(text)
    parts.append(text[kept:])
    return "".join(parts)


class _Reader:
    """Reads a parsed record in the order of its text and raises the first fault it meets.

    ``invalid_utf8`` says whether the record's bytes hold invalid UTF-8: if not, every lone
    surrogate in its strings comes from a ``\\u`` escape.
    """

    def __init__(
        self, layout: Layout, judge_ts: Callable[[int | str], object], *, invalid_utf8: bool
    ) -> None:
        self._layout = layout
        self._judge_ts = judge_ts
        self._invalid_utf8 = invalid_utf8
        roles: dict[str, Callable[[Any, _At], None]] = dict.fromkeys(layout.labels, self._label)
        # As in the decoder, a field named twice in the settings takes the last core role.
        roles.update(
            {
                layout.id: self._id,
                layout.features: self._features,
                layout.ts: self._ts,
                layout.key: self._key,
            }
        )
        self._roles = roles

    def read(self, doc: Any) -> None:
        """Raise the first fault of the parsed record ``doc``; return if it has none."""
        if not isinstance(doc, _Object):
            raise InvalidEvent("not_object", f"the record is {_describe(doc)}, not an object")
        present: dict[str, Any] = {}
        for name, value in self._pairs(doc, None):
            present[name] = value
            self._roles.get(name, self._anything)(value, _At(None, name))
        layout = self._layout
        if layout.id not in present:
            raise InvalidEvent("missing_field", f"an event needs {layout.id!r}")
        if layout.features not in present and (
            not layout.label_only or all(present.get(name) is None for name in layout.labels)
        ):
            raise missing_features(layout)

    def _id(self, value: Any, at: _At) -> None:
        if type(value) is str:
            self._check_text(value, at)
        elif type(value) is int:
            return
        elif isinstance(value, _Number) and value.kind != "infinite":
            raise _number_fault(value, at)
        else:
            raise _wrong_type(value, at, "an id is a string or an integer")

    def _ts(self, value: Any, at: _At) -> None:
        field = self._layout.ts
        if value is None:
            return
        if type(value) is str:
            self._check_text(value, at)
            self._judge_ts(value)
        elif type(value) is int:
            self._judge_ts(value)
        elif isinstance(value, _Number) and value.kind == "constant":
            raise _number_fault(value, at)
        elif isinstance(value, _Number) and value.kind == "long":
            raise InvalidEvent(
                "bad_timestamp",
                f"{field!r} is an integer of {len(value.text)} characters, not a time in "
                "milliseconds",
            )
        else:
            raise InvalidEvent(
                "bad_timestamp",
                f"{field!r} must be an ISO-8601 string or integer milliseconds, not "
                f"{_describe(value)}",
            )

    def _key(self, value: Any, at: _At) -> None:
        if value is None:
            return
        if type(value) is str:
            self._check_text(value, at)
        elif isinstance(value, _Number) and value.kind == "constant":
            raise _number_fault(value, at)
        else:
            raise _wrong_type(value, at, "a key is a string or null")

    def _features(self, value: Any, at: _At) -> None:
        if isinstance(value, _Object):
            for name, feature in self._pairs(value, at):
                kind = type(feature)
                if kind is float or kind is bool or feature is None:
                    continue
                if kind is str and feature.isascii():
                    continue
                self._feature(feature, _At(at, name))
        elif isinstance(value, _Number) and value.kind == "constant":
            raise _number_fault(value, at)
        else:
            raise _wrong_type(value, at, "the features are an object of names to values")

    def _feature(self, value: Any, at: _At) -> None:
        kind = type(value)
        if value is None or kind is bool or kind is float:
            return
        if kind is str:
            self._check_text(value, at)
        elif kind is int:
            if not -(2**63) <= value < 2**63:
                raise InvalidEvent(
                    "out_of_range",
                    f"{_path(at)} is {_digits(str(value))}, outside the 64-bit integers a "
                    "feature may hold",
                )
        elif isinstance(value, _Number):
            raise _number_fault(value, at)
        else:
            raise _wrong_type(value, at, "a feature is a boolean, a number, a string or null")

    def _label(self, value: Any, at: _At) -> None:
        kind = type(value)
        if value is None or kind is bool or kind is float or kind is int:
            return
        if kind is str:
            self._check_text(value, at)
        elif isinstance(value, _Number):
            raise _number_fault(value, at)
        else:
            raise _wrong_type(value, at, "a label is a boolean, a number, a string or null")

    def _anything(self, value: Any, at: _At) -> None:
        """Check a value no model reads, at any depth: its keys, strings and numbers."""
        self._unread(value, at)
        if not isinstance(value, _Object | list):
            return
        stack = [(at, self._steps(value, at))]
        while stack:
            outer, steps = stack[-1]
            for step, inner in steps:
                kind = type(inner)
                if kind is list or kind is _Object:
                    place = _At(outer, step)
                    stack.append((place, self._steps(inner, place)))
                    break
                if kind is str:
                    if not inner.isascii():
                        self._check_text(inner, _At(outer, step))
                elif kind is _Number or inner is _DEEP:
                    self._unread(inner, _At(outer, step))
            else:
                stack.pop()

    def _unread(self, value: Any, at: _At) -> None:
        """Check a scalar no model reads."""
        if type(value) is str:
            self._check_text(value, at)
        elif isinstance(value, _Number):
            raise _number_fault(value, at)
        elif value is _DEEP:
            raise InvalidEvent(
                "too_deep", f"arrays or objects nested deeper than can be read, at {_path(at)}"
            )

    def _steps(self, value: _Object | list[Any], at: _At) -> Iterator[tuple[str | int, Any]]:
        """The keys or indexes inside an array or object, with their values, in order."""
        if isinstance(value, list):
            return enumerate(value)
        return self._pairs(value, at)

    def _pairs(self, obj: _Object, at: _At | None) -> Iterator[tuple[str, Any]]:
        """The pairs of ``obj`` in order, each key checked before its value is read."""
        seen: set[str] = set()
        for key, value in obj.pairs:
            self._check_text(key, at, is_key=True)
            if key in seen:
                raise InvalidEvent(
                    "duplicate_key", f"the key {_quote(key)} appears twice in {_path(at)}"
                )
            seen.add(key)
            yield key, value

    def _check_text(self, text: str, at: _At | None, *, is_key: bool = False) -> None:
        """Refuse a string holding invalid UTF-8 or a lone surrogate."""
        if text.isascii():
            return
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self._bad_text(text, f"a key in {_path(at)}" if is_key else _path(at)) from None

    def _bad_text(self, text: str, where: str) -> InvalidEvent:
        if self._invalid_utf8:  # show the record's bytes the surrogates stand for
            try:
                text.encode("utf-8", "surrogateescape").decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = bytes(exc.object[exc.start : exc.end])
                return InvalidEvent(
                    "bad_encoding", f"{where} is not valid UTF-8 ({exc.reason}: {bad!r})"
                )
            except UnicodeEncodeError:
                pass
        lone = next(char for char in text if "\ud800" <= char <= "\udfff")
        return InvalidEvent(
            "bad_encoding",
            f"{where} holds {lone!r}, half of a surrogate pair (a lone \\u escape)",
        )


def _number_fault(number: _Number, at: _At) -> InvalidEvent:
    """The fault of a ``_Number`` where a number may stand."""
    if number.kind == "constant":
        return InvalidEvent("non_finite", f"{_path(at)} is {number.text}, not a JSON number")
    if number.kind == "infinite":
        return InvalidEvent(
            "non_finite", f"{_path(at)} is {_digits(number.text)}, too large for a double"
        )
    return InvalidEvent(
        "out_of_range",
        f"{_path(at)} is an integer of {len(number.text)} characters, over the "
        f"{MAX_INT_CHARS} an integer may have",
    )


def _wrong_type(value: Any, at: _At, expected: str) -> InvalidEvent:
    return InvalidEvent("wrong_type", f"{_path(at)} is {_describe(value)}; {expected}")


def _describe(value: Any) -> str:
    """What ``value`` is, shortly: its kind and, for a scalar, itself."""
    if value is None:
        return "null"
    if value is True or value is False:
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({_digits(str(value))})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({_quote(value)})"
    if isinstance(value, _Number):
        if value.kind == "long":
            return f"an integer of {len(value.text)} characters"
        if value.kind == "infinite":
            return f"a number too large for a double ({_digits(value.text)})"
        return value.text
    if isinstance(value, list):
        return "an array"
    if isinstance(value, _Object):
        return "an object"
    return "an array or object nested too deep"


def _path(at: _At | None) -> str:
    """``at`` as a path such as ``$.features.x`` or ``$.meta['a b'][0]``, truncated."""
    steps: list[str | int] = []
    while at is not None:
        steps.append(at.step)
        at = at.outer
    steps.reverse()
    shown = "".join(_step(step) for step in steps[:_PATH_STEPS])
    if len(steps) > _PATH_STEPS:
        shown += f"… ({len(steps)} levels)"
    return "$" + shown


def _step(step: str | int) -> str:
    if isinstance(step, int):
        return f"[{step}]"
    if step.isidentifier() and len(step) <= 40:
        return f".{step}"
    return f"[{_quote(step)}]"


def _quote(text: str) -> str:
    """``text`` quoted, at most 40 characters of it."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _digits(text: str) -> str:
    """A number's literal, its first 20 characters when it is long."""
    return text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"
