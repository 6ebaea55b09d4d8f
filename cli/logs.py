"""Logging: one JSON object a line, or plain text on a terminal.

Structured fields go in ``extra={"fields": {...}}``. Nothing here formats
settings or events, so secrets and raw sensitive fields never reach a log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livelearn.settings import LogSettings


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += "  " + " ".join(f"{k}={_short(v)}" for k, v in fields.items())
        return line


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def setup_logging(settings: LogSettings) -> None:
    """Route the root logger to stderr in the configured format."""
    use_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # kafka-python is chatty at INFO about every connection and rebalance step.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
