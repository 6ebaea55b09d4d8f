"""What a replay records as it runs: each shard's metric series and drift points, and
the progress it shows."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from livelearn.errors import InvalidEvent
from livelearn.store.checkpoints import ShardId
from livelearn.stream.fetcher import KafkaRecord
from livelearn.stream.worker import Partition

log = logging.getLogger("livelearn.replay")


class Recorder:
    """Samples every shard's metrics after each chunk, and shows progress."""

    def __init__(self, total: int, primary: str, progress: bool) -> None:
        self.series: dict[str, list[dict[str, Any]]] = {}
        self.drift: dict[str, list[dict[str, Any]]] = {}
        self._drift_seen: dict[ShardId, int] = {}
        self._total = max(total, 1)
        self._seen = 0
        self._primary = primary
        self._started = time.monotonic()
        self._last_log = 0.0
        self._tty = progress and sys.stderr.isatty()
        self._show = progress

    def __call__(self, part: Partition, records: list[KafkaRecord]) -> None:
        self._seen += len(records)
        last = records[-1]
        last_time = _event_time(part, last)
        shown: float | None = None
        for shard in part.shards:
            learner = shard.learner
            stats = learner.stats()
            if shown is None:
                shown = stats["rolling_metrics"].get(self._primary)
            self.series.setdefault(shard.id.model, []).append(
                {
                    "topic": shard.id.topic,
                    "partition": shard.id.partition,
                    "offset": last.offset,
                    "event_time_ms": last_time,
                    "events_learned": stats["events_learned"],
                    "metrics": stats["metrics"],
                    "rolling_metrics": stats["rolling_metrics"],
                    # Label-free signals of the last finished monitor window, if any.
                    "signals": stats.get("monitor", {}).get("signals", {}),
                }
            )
            new = learner.drift_detections - self._drift_seen.get(shard.id, 0)
            self._drift_seen[shard.id] = learner.drift_detections
            for offset in list(learner.drift_offsets)[-new:] if new > 0 else []:
                record = next((r for r in records if r.offset == offset), None)
                self.drift.setdefault(shard.id.model, []).append(
                    {
                        "topic": shard.id.topic,
                        "partition": shard.id.partition,
                        "offset": offset,
                        "event_time_ms": None if record is None else _event_time(part, record),
                    }
                )
        self._progress(shown)

    def _progress(self, value: float | None) -> None:
        if not self._show:
            return
        now = time.monotonic()
        elapsed = max(now - self._started, 1e-9)
        rate = self._seen / elapsed
        eta = (self._total - self._seen) / rate if rate else float("inf")
        shown = "-" if value is None else f"{value:.4f}"
        if self._tty:
            done = min(self._seen / self._total, 1.0)
            bar = "#" * int(done * 30)
            sys.stderr.write(
                f"\r[{bar:<30}] {self._seen}/{self._total} {rate:,.0f} ev/s "
                f"ETA {eta:4.0f}s {self._primary} {shown}   "
            )
            sys.stderr.flush()
        elif now - self._last_log >= 10:
            self._last_log = now
            log.info(
                "replay progress",
                extra={
                    "fields": {
                        "events": self._seen,
                        "total": self._total,
                        "events_per_s": round(rate, 1),
                        "eta_s": round(eta, 1),
                        self._primary: value,
                    }
                },
            )

    def close(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


def _event_time(part: Partition, record: KafkaRecord) -> int:
    """The event's own ``ts`` when it has a valid one, else the Kafka record's timestamp."""
    try:
        ts = part.decoder.decode(record.value, record.timestamp).ts_ms
    except InvalidEvent:
        ts = None
    return int(ts if ts is not None else record.timestamp)
