"""What a replay reads: a range of a topic's history, and the consumer that reads it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from livelearn.errors import ConfigError, InvalidEvent
from livelearn.settings import Settings, server_list
from livelearn.stream.decode import parse_timestamp


@dataclass(frozen=True)
class ReplayRange:
    """Which records to replay: per partition ``[start, end)`` offsets, and a time window."""

    offsets: dict[TopicPartition, tuple[int, int]]
    from_ms: int | None = None
    to_ms: int | None = None

    @property
    def total(self) -> int:
        """Records in the offset ranges (the time window may keep fewer)."""
        return sum(max(0, end - start) for start, end in self.offsets.values())

    def narrowed(
        self,
        starts: Mapping[TopicPartition, int] | None = None,
        ends: Mapping[TopicPartition, int] | None = None,
    ) -> ReplayRange:
        """The same partitions and time window, from ``starts`` and to ``ends`` where given
        (clamped to the range: it never grows)."""
        starts, ends = starts or {}, ends or {}
        return ReplayRange(
            {
                tp: (max(start, starts.get(tp, start)), min(end, ends.get(tp, end)))
                for tp, (start, end) in self.offsets.items()
            },
            self.from_ms,
            self.to_ms,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready form for the report."""
        return {
            "partitions": {
                f"{tp.topic}/{tp.partition}": [start, end]
                for tp, (start, end) in sorted(self.offsets.items())
            },
            "from": _iso(self.from_ms),
            "to": _iso(self.to_ms),
        }


def parse_offsets(text: str) -> dict[int, tuple[int, int]]:
    """``PARTITION:START-END`` pairs, comma separated; END is exclusive.

    >>> parse_offsets("0:10-20,1:0-5")
    {0: (10, 20), 1: (0, 5)}
    """
    out: dict[int, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            partition, _, span = part.partition(":")
            start, _, end = span.partition("-")
            out[int(partition)] = (int(start), int(end))
        except ValueError:
            raise ConfigError(
                f"--offsets {part!r}: write PARTITION:START-END, e.g. 0:100-200"
            ) from None
    return out


def parse_time(text: str, option: str) -> int:
    """Milliseconds from an ISO-8601 time given on the command line."""
    try:
        return parse_timestamp(text, option)
    except InvalidEvent:
        raise ConfigError(
            f"{option} {text!r}: give an ISO-8601 time with a zone, e.g. 2026-11-26T10:00:00Z"
        ) from None


def resolve_range(
    consumer: KafkaConsumer,
    topics: Sequence[str],
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    offsets: Mapping[int, tuple[int, int]] | None = None,
) -> ReplayRange:
    """Turn a time window, explicit offsets or nothing (everything retained) into offsets."""
    tps = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConfigError(f"topic {topic!r} does not exist or has no partitions")
        tps += [TopicPartition(topic, p) for p in sorted(partitions)]
    first = consumer.beginning_offsets(tps)
    last = consumer.end_offsets(tps)
    ranges = {tp: (first[tp], last[tp]) for tp in tps}
    if offsets is not None:
        chosen = {tp: offsets[tp.partition] for tp in tps if tp.partition in offsets}
        if not chosen:
            raise ConfigError(f"--offsets names no partition of {', '.join(topics)}")
        ranges = {
            tp: (max(start, first[tp]), min(end, last[tp])) for tp, (start, end) in chosen.items()
        }
    if from_ms is not None:
        found = consumer.offsets_for_times({tp: from_ms for tp in ranges})
        ranges = {
            tp: (found[tp].offset if found.get(tp) else end, end) for tp, (_, end) in ranges.items()
        }
    if to_ms is not None:
        found = consumer.offsets_for_times({tp: to_ms for tp in ranges})
        ranges = {
            tp: (start, found[tp].offset if found.get(tp) else end)
            for tp, (start, end) in ranges.items()
        }
    return ReplayRange(ranges, from_ms, to_ms)


def replay_consumer_config(settings: Settings) -> dict[str, Any]:
    """``KafkaConsumer`` settings for a replay: no group, so live groups are untouched."""
    k = settings.kafka
    return {
        "bootstrap_servers": server_list(settings.require_services()[0]),
        "group_id": None,
        "enable_auto_commit": False,
        "client_id": f"{k.client_id}-replay",
        "max_poll_records": k.max_poll_records,
        "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
        "fetch_max_bytes": k.fetch_max_bytes,
        # As the worker reads: forwarded labels of an aborted transaction never count.
        "isolation_level": "read_committed",
    }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()
