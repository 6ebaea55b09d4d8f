"""A model's timeline: one compact entry per checkpoint, kept in a capped Redis stream.

The checkpoint script (`store.checkpoints`) appends the entry in the same Lua call that
writes the checkpoint, so the timeline holds exactly the checkpoints the store accepted:
a fenced or refused write appends nothing, a write retried under a new version appends
once. The stream is capped at ``redis.timeline_entries`` entries (``XADD … MAXLEN ~``:
Redis trims whole nodes, so it may hold a node's worth more). Its entry ids are Redis'
clock when the checkpoint was written (milliseconds), so they order the entries in wall
time even when a topic's event times go back.

An entry carries the shard, its next offset, version and the event time of the last event
it covers, the counts, metrics, the monitor's signals and thresholds, and what is new since
the checkpoint the state built on: drift detections and label-free alarms, each alarm with
its explanation (signal, feature or class, window offsets and event times, value,
threshold). Every list in it is bounded, and strings that come from data are cut, so an
entry's size does not grow with the stream. It holds no secret: what the checkpoint's own
stats hold, with sanitized features as the learner saw them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["TIMELINE_ENTRIES", "TimelineEntry", "TimelineRead", "decode_entry", "timeline_entry"]

# Entries kept per model by default (``redis.timeline_entries``): with a checkpoint a second
# per shard that is hours of history, and each entry stays small (`timeline_entry`).
TIMELINE_ENTRIES = 10_000
# New alarms and drift detections one entry lists; more between two checkpoints are counted.
_ALARMS_PER_ENTRY = 20
_DRIFTS_PER_ENTRY = 20
# Strings that come from data (feature names, categories) are cut to this length.
_CHARS = 64
# The monitor's fields an entry keeps (its alarm log is replaced by the new alarms).
_MONITOR_FIELDS = ("windows", "calibrated", "signals", "thresholds", "responsible", "alarms")
_ALARM_FIELDS = (
    "seq",
    "signal",
    "feature",
    "category",
    "value",
    "threshold",
    "now",
    "before",
    "first_offset",
    "last_offset",
    "first_event_ms",
    "last_event_ms",
)


def timeline_entry(
    topic: str,
    partition: int,
    next_offset: int,
    version: int,
    stats: dict[str, Any],
    event_ms: int | None,
    since: int,
) -> bytes:
    """The timeline entry of one checkpoint, as compact JSON.

    Parameters
    ----------
    topic, partition, next_offset, version
        The checkpoint's shard, the next offset it reads and its version.
    stats
        The checkpoint's stats (``Learner.stats``).
    event_ms
        The event time of the last event the checkpoint covers (None when unknown).
    since
        The next offset of the checkpoint the state built on (-1 for none): the drift
        detections and alarms at or past it are new in this one.

    Examples
    --------
    >>> raw = timeline_entry("t", 0, 10, 1, {"events_learned": 10, "drift_offsets": [3, 9]},
    ...                      None, 5)
    >>> decode_entry("1-0", raw).drift_offsets
    [9]
    """
    monitor = stats.get("monitor") or {}
    alarms = [a for a in monitor.get("alarm_log", []) if a.get("last_offset", -1) >= since]
    drifts = [o for o in stats.get("drift_offsets", []) if o >= since]
    entry: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "next_offset": next_offset,
        "version": version,
        "event_ms": event_ms,
        "events_learned": stats.get("events_learned", 0),
        "events_scored": stats.get("events_scored", 0),
        "metrics": stats.get("metrics", {}),
        "rolling_metrics": stats.get("rolling_metrics", {}),
        "drift_detections": stats.get("drift_detections", 0),
        "drift_offsets": drifts[-_DRIFTS_PER_ENTRY:],
        "monitor": {k: monitor[k] for k in _MONITOR_FIELDS if k in monitor} or None,
        "alarms": [_alarm(a) for a in alarms[-_ALARMS_PER_ENTRY:]],
        "alarms_left_out": max(0, len(alarms) - _ALARMS_PER_ENTRY),
    }
    if monitor.get("responsible"):
        entry["monitor"]["responsible"] = {k: _cut(v) for k, v in monitor["responsible"].items()}
    if stats.get("labels") is not None:
        entry["labels"] = stats["labels"]
    return json.dumps(entry, separators=(",", ":"), allow_nan=False).encode()


def _alarm(alarm: dict[str, Any]) -> dict[str, Any]:
    """An alarm's explanation, strings from data cut, and the other keys past their
    threshold (already bounded by the monitor) cut too."""
    out = {k: _cut(alarm.get(k)) for k in _ALARM_FIELDS}
    out["also"] = [_cut(k) for k in alarm.get("also", [])]
    return out


def _cut(value: Any) -> Any:
    return value[:_CHARS] if isinstance(value, str) else value


@dataclass(frozen=True)
class TimelineEntry:
    """One checkpoint in a model's timeline; ``id`` is the stream's entry id and ``t`` the
    wall time the checkpoint was written (Redis' clock, seconds)."""

    id: str
    t: float
    topic: str
    partition: int
    next_offset: int
    version: int
    event_ms: int | None
    events_learned: int
    rolling_metrics: dict[str, float | None]
    metrics: dict[str, float | None]
    drift_detections: int
    drift_offsets: list[int]
    monitor: dict[str, Any] | None
    alarms: list[dict[str, Any]]


def decode_entry(entry_id: str, raw: bytes) -> TimelineEntry:
    """An entry as the stream holds it, read back."""
    data = json.loads(raw)
    return TimelineEntry(
        id=entry_id,
        t=int(entry_id.split("-", 1)[0]) / 1000,
        topic=data["topic"],
        partition=data["partition"],
        next_offset=data["next_offset"],
        version=data["version"],
        event_ms=data.get("event_ms"),
        events_learned=data.get("events_learned", 0),
        rolling_metrics=data.get("rolling_metrics", {}),
        metrics=data.get("metrics", {}),
        drift_detections=data.get("drift_detections", 0),
        drift_offsets=data.get("drift_offsets", []),
        monitor=data.get("monitor"),
        alarms=data.get("alarms", []),
    )


@dataclass(frozen=True)
class TimelineRead:
    """What one read of a model's timeline found: its entries after the id asked for (or
    its newest ones), oldest first, and the id of the oldest entry the stream still holds
    (None when it holds none: never written, or deleted)."""

    entries: list[TimelineEntry]
    first_id: str | None
