"""A predict request's body: read within its size and time limits, decoded as JSON, and
measured (events in a batch, features in an event) before it is validated.

Each check refuses with a ``RequestRefused`` that carries the status, the reason counted in
``livelearn_api_rejected_total`` and the answer's detail; the API turns it into the answer.
Body problems are 422s shaped as a validation error (``loc``, ``msg``, ``type``), whose
``msg`` never quotes a raw string from the body.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request

from livelearn.serving.metrics import RejectReason

__all__ = ["BodyLimits", "RequestRefused", "decode_json", "measure", "read_body"]

# A JSON string can hold a lone surrogate only through a \u escape of one (as raw bytes it
# is not UTF-8): a body without such an escape needs no look at its strings.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Content-Length values longer than this are not worth converting: they exceed any limit.
_MAX_LENGTH_DIGITS = 18


class RequestRefused(Exception):
    """A request refused before its prediction; the API answers it and counts ``reason``.

    ``detail`` is the answer's ``detail``: a sentence, or validation-error items. ``close``
    asks for the connection to be closed after the answer.
    """

    def __init__(
        self,
        status: int,
        reason: RejectReason,
        detail: str | list[dict[str, Any]],
        *,
        close: bool = False,
    ) -> None:
        super().__init__(detail if isinstance(detail, str) else detail[0]["msg"])
        self.status = status
        self.reason = reason
        self.detail = detail
        self.close = close


@dataclass(frozen=True)
class BodyLimits:
    """How large, how slow and how big in events and features a predict body may be."""

    max_bytes: int
    timeout_seconds: float
    max_batch: int
    max_features: int


def invalid(reason: RejectReason, msg: str, *loc: str | int) -> RequestRefused:
    """A 422 for the body, as one validation-error item at ``body`` + ``loc``."""
    return RequestRefused(422, reason, [{"loc": ["body", *loc], "msg": msg, "type": reason}])


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The body of ``request``, read as it streams in.

    Raises
    ------
    RequestRefused
        413 as soon as the declared or received length passes ``limits.max_bytes``; 408
        when it is not all in within ``limits.timeout_seconds`` (both close the
        connection); 422 when it is not sent as JSON; 499 when the client leaves before
        its end.

    """
    # The connection is closed after the answer: reading the rest of the body only to
    # throw it away would cost this server what the client chooses to send. Clients read
    # the answer all the same (httpx and curl read it when their upload is cut short).
    too_large = RequestRefused(
        413,
        "body_too_large",
        f"the body is larger than {limits.max_bytes} bytes (serving.max_body_bytes): "
        "send smaller batches",
        close=True,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (
        len(declared) > _MAX_LENGTH_DIGITS or int(declared) > limits.max_bytes
    ):
        raise too_large
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        shown = ascii(media[:64]) if media else "none"
        raise invalid(
            "not_json",
            f"the body must be JSON, sent as Content-Type: application/json (got {shown})",
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise RequestRefused(
            408,
            "body_timeout",
            f"the body did not arrive within {limits.timeout_seconds:g} s "
            "(serving.body_timeout_seconds)",
            close=True,
        ) from None
    except ClientDisconnect:
        raise RequestRefused(
            499, "client_disconnected", "the client left before the end of its body"
        ) from None
    return b"".join(chunks)


def decode_json(body: bytes) -> Any:
    """``body`` parsed as JSON, as ``json.loads`` parses it (NaN and Infinity included:
    validation refuses them where they stand).

    Raises
    ------
    RequestRefused
        422, with a reason for each way the body can fail: not JSON, not UTF-8, nested too
        deeply, a number with too many digits, a lone surrogate.

    """
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise invalid("not_json", f"the body is not JSON: {exc.msg} ({where})", exc.pos) from None
    except UnicodeDecodeError:
        raise invalid("bad_encoding", "the body is not UTF-8 JSON") from None
    except RecursionError:
        raise invalid(
            "too_deep", "the body nests arrays or objects too deeply to be read"
        ) from None
    except ValueError:  # the only other: int() refusing a number with too many digits
        limit = sys.get_int_max_str_digits()
        raise invalid(
            "too_many_digits",
            f"a number in the body has too many digits (more than {limit}): send numbers "
            "that fit in a float or a 64-bit integer",
        ) from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        lone = _lone_surrogate(value)
        if lone is not None:
            raise invalid(
                "bad_encoding",
                f"the string {lone[:40]!a} holds a \\u escape that is half of a "
                "surrogate pair, not a character: send valid Unicode",
            )
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) in ``value`` that UTF-8 cannot encode, if any.

    >>> _lone_surrogate({"a": ["ok", {"b\\ud800": 1}]})
    'b\\ud800'
    >>> _lone_surrogate({"\\U0001f600": "\\u00e9"}) is None
    True
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            strings: Any = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        elif isinstance(item, str):
            strings = (item,)
        else:
            continue
        for text in strings:
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    return str(text)
    return None


def measure(value: Any, limits: BodyLimits) -> None:
    """Refuse a batch of more than ``limits.max_batch`` events, or an event of more than
    ``limits.max_features`` features, before any of it is validated.

    The shapes follow the body's discriminator: a mapping with ``events`` is a batch.

    >>> limits = BodyLimits(1024, 1.0, max_batch=2, max_features=2)
    >>> measure({"events": [{"features": {"a": 1}}] * 3}, limits)
    Traceback (most recent call last):
    ...
    livelearn.serving._body.RequestRefused: a batch holds at most 2 events (serving.max_batch), \
got 3: split it into smaller batches
    """
    if not isinstance(value, dict):
        return
    if "events" not in value:
        _measure_event(value, limits, "event")
        return
    events = value["events"]
    if not isinstance(events, list):
        return
    if len(events) > limits.max_batch:
        raise invalid(
            "too_many_events",
            f"a batch holds at most {limits.max_batch} events (serving.max_batch), got "
            f"{len(events)}: split it into smaller batches",
            "batch",
            "events",
        )
    for i, event in enumerate(events):
        if isinstance(event, dict):
            _measure_event(event, limits, "batch", "events", i)


def _measure_event(event: dict[str, Any], limits: BodyLimits, *loc: str | int) -> None:
    features = event.get("features")
    if isinstance(features, dict) and len(features) > limits.max_features:
        raise invalid(
            "too_many_features",
            f"an event has at most {limits.max_features} features (serving.max_features), "
            f"got {len(features)}: send only the features the model uses",
            *loc,
            "features",
        )
