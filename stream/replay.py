"""Replay: retrain and evaluate a model on a range of a topic's history.

The replay runs the worker itself (the same decoding, sanitizing, test-then-train,
metrics and drift detection) over a Kafka consumer with manually assigned
partitions: it joins no consumer group, so live groups and their committed offsets
are untouched. State lives in memory and is published only when asked, as a
candidate release, never over the live shards.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from learners import ModelSpec, SnapshotCodec, combine_metrics, load_learner
from livelearn.errors import ConfigError, InvalidEvent, StaleEpochError
from settings import Settings
from store.checkpoints import Checkpoint, RedisCheckpointStore, ShardId
from store.releases import ReleaseStore
from stream.decode import parse_timestamp
from stream.dlq import DeadLetterSink
from stream.metrics import WorkerMetrics
from stream.worker import Partition, Worker

log = logging.getLogger("livelearn.replay")

StartFrom = Literal["fresh", "live"] | int  # an int is a release number

# Replays write one checkpoint, at the end: a cadence this long never triggers.
_NEVER = {"every_events": 2**62, "every_seconds": 1e12}
COMPARE_SUFFIX = "--live"


# -- what to read ---------------------------------------------------------------------


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


def parse_start(text: str) -> StartFrom:
    """``fresh``, ``live`` or ``release:N``.

    >>> parse_start("release:3"), parse_start("fresh")
    (3, 'fresh')
    """
    if text in ("fresh", "live"):
        return text  # type: ignore[return-value]
    kind, _, number = text.partition(":")
    if kind == "release" and number.isdigit():
        return int(number)
    raise ConfigError(f"--start {text!r}: use fresh, live or release:N")


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


# -- the adapters the worker runs on --------------------------------------------------


class ReplaySource:
    """The worker's ``Consumer``: assigned partitions, bounded ranges, no group, no commits."""

    def __init__(self, consumer: Any, span: ReplayRange, chunk: int) -> None:
        self._consumer = consumer  # a KafkaConsumer, or a ProcessConsumer in a child process
        self._span = span
        self._chunk = chunk
        self._done: set[TopicPartition] = {tp for tp, (s, e) in span.offsets.items() if s >= e}
        # Fetched records, handed to the worker a chunk at a time: a chunk is one point
        # of the metric series.
        self._pending: collections.deque[tuple[TopicPartition, list[Any]]] = collections.deque()
        self.finished: Callable[[], None] = lambda: None

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        tps = sorted(self._span.offsets)
        self._consumer.assign(tps)
        listener.on_partitions_assigned(tps)
        for tp in tps:  # the range, whatever offset a restored checkpoint covers
            self._consumer.seek(tp, self._span.offsets[tp][0])
        if self._done:
            self._consumer.pause(*self._done)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        if not self._pending:
            if len(self._done) == len(self._span.offsets):
                self.finished()
                return {}
            self._fetch(timeout_ms)
            if not self._pending:
                return {}
        tp, chunk = self._pending.popleft()
        return {tp: chunk}

    def _fetch(self, timeout_ms: int) -> None:
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        lo, hi = self._span.from_ms, self._span.to_ms
        for tp, records in batches.items():
            end = self._span.offsets[tp][1]
            kept = [
                r
                for r in records
                if r.offset < end
                and (lo is None or r.timestamp >= lo)
                and (hi is None or r.timestamp < hi)
            ]
            if records and records[-1].offset >= end - 1:
                self._done.add(tp)
                self._consumer.pause(tp)
            for i in range(0, len(kept), self._chunk):
                self._pending.append((tp, kept[i : i + self._chunk]))
        # A range may end in offsets that hold no record (transaction markers, compacted
        # records): the position, not the last record seen, says a partition is done.
        for tp, (_, end) in self._span.offsets.items():
            if tp not in self._done and self._consumer.position(tp) >= end:
                self._done.add(tp)
                self._consumer.pause(tp)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.seek(partition, max(offset, self._span.offsets[partition][0]))

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._consumer.seek(tp, self._span.offsets[tp][0])

    seek_to_end = seek_to_beginning

    def pause(self, *partitions: TopicPartition) -> None:
        self._consumer.pause(*partitions)

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Nothing: a replay commits no offsets."""

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any) -> None:
        """Nothing: a replay commits no offsets."""

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._span.offsets[partition][1]

    def close(self) -> None:
        self._consumer.close()


class MemoryStore:
    """The worker's ``CheckpointStore`` for a replay: starting states in, final states out."""

    def __init__(self, initial: Mapping[ShardId, Checkpoint]) -> None:
        self.rows: dict[ShardId, Checkpoint] = dict(initial)
        self._epochs: dict[ShardId, int] = {}

    def claim(self, shard: ShardId) -> tuple[int, Checkpoint | None]:
        self._epochs[shard] = self._epochs.get(shard, 0) + 1
        return self._epochs[shard], self.rows.get(shard)

    def save(
        self, shard: ShardId, epoch: int, blob: bytes, next_offset: int, stats: dict[str, Any]
    ) -> int:
        if self._epochs.get(shard) != epoch:
            raise StaleEpochError(str(shard), epoch, self._epochs.get(shard))
        old = self.rows.get(shard)
        version = old.version + 1 if old is not None else 1
        self.rows[shard] = Checkpoint(
            shard, blob, next_offset, epoch, stats, time.time(), len(blob), version
        )
        return version

    def load(self, shard: ShardId) -> Checkpoint | None:
        return self.rows.get(shard)


@dataclass
class InvalidEvents:
    """The replay's ``DeadLetterSink``: lists invalid events, forwards them when asked."""

    forward: DeadLetterSink | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        *,
        reason: str,
        detail: str,
        source: tuple[str, int, int],
    ) -> None:
        self.seen.append(
            {
                "topic": source[0],
                "partition": source[1],
                "offset": source[2],
                "reason": reason,
                "detail": detail,
            }
        )
        if self.forward is not None:
            self.forward.send(topic, value, key, reason=reason, detail=detail, source=source)

    def flush(self) -> None:
        if self.forward is not None:
            self.forward.flush()


# -- running ------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What a replay produced: the report data and the final shard checkpoints."""

    report: dict[str, Any]
    final: dict[ShardId, Checkpoint]
    interrupted: bool


class _Recorder:
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

    def __call__(self, part: Partition, records: list[Any]) -> None:
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


def _event_time(part: Partition, record: Any) -> int:
    """The event's own ``ts`` when it has a valid one, else the Kafka record's timestamp."""
    try:
        ts = part.decoder.decode(record.value).ts_ms
    except InvalidEvent:
        ts = None
    return int(ts if ts is not None else record.timestamp)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def initial_state(
    spec: ModelSpec,
    start: StartFrom,
    span: ReplayRange,
    codec: SnapshotCodec,
    store: RedisCheckpointStore | None,
    releases: ReleaseStore | None,
    model_name: str | None = None,
) -> dict[ShardId, Checkpoint]:
    """Starting checkpoints for ``spec``'s shards, offsets moved to the range's start.

    The learners keep their model, counts and drift state, but their metrics start
    afresh, so the report scores the replayed events only.
    """
    name = model_name or spec.name
    found: dict[ShardId, Checkpoint] = {}
    if start == "fresh":
        return found
    for tp, (first, _) in span.offsets.items():
        live_id = ShardId(spec.name, tp.topic, tp.partition)
        if start == "live":
            assert store is not None
            row = store.load(live_id)
            if row is None:
                continue
            blob, stats = row.blob, row.stats
        else:
            assert releases is not None
            shard = releases.get(spec.name, int(start)).shards.get(live_id)
            if shard is None:
                continue
            blob, stats = shard.blob, shard.stats
        learner = load_learner(codec, blob)
        learner.reset_metrics()
        blob = codec.encode(learner)
        shard_id = ShardId(name, tp.topic, tp.partition)
        found[shard_id] = Checkpoint(shard_id, blob, first, 0, stats, time.time(), len(blob), 0)
    if start == "live" and not found:
        raise ConfigError(f"--start live: model {spec.name!r} has no live checkpoint to start from")
    return found


def run_replay(
    settings: Settings,
    spec: ModelSpec,
    consumer: KafkaConsumer,
    span: ReplayRange,
    codec: SnapshotCodec,
    hash_key: bytes,
    *,
    start: StartFrom = "fresh",
    compare_live: bool = False,
    store: RedisCheckpointStore | None = None,
    releases: ReleaseStore | None = None,
    dead_letters: DeadLetterSink | None = None,
    points: int = 200,
    progress: bool = True,
) -> ReplayResult:
    """Run the worker over ``span`` and return the report data and the final states."""
    replayed = spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update=_NEVER)})
    specs = [replayed]
    initial = initial_state(spec, start, span, codec, store, releases)
    if compare_live:
        live = replayed.model_copy(update={"name": spec.name + COMPARE_SUFFIX})
        specs.append(live)
        initial.update(initial_state(spec, "live", span, codec, store, releases, live.name))
    run_settings = settings.model_copy(update={"models": specs})
    chunk = max(1, min(span.total // max(points, 1), settings.kafka.max_poll_records))
    source = ReplaySource(consumer, span, chunk)
    memory = MemoryStore(initial)
    invalid = InvalidEvents(forward=dead_letters)
    recorder = _Recorder(span.total, spec.metrics[0], progress)
    worker = Worker(
        run_settings,
        source,
        memory,
        invalid,
        codec,
        hash_key,
        WorkerMetrics(),
        on_batch=recorder,
    )
    source.finished = worker.stop
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        worker.stop()

    started = time.monotonic()
    with _signal(signal.SIGINT, on_sigint):
        worker.run()
    recorder.close()
    elapsed = time.monotonic() - started
    final = {s: c for s, c in memory.rows.items() if c.epoch > 0}
    report = _report(spec, span, start, initial, final, recorder, invalid, elapsed, interrupted)
    return ReplayResult(report, final, interrupted)


@contextlib.contextmanager
def _signal(signum: int, handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _report(
    spec: ModelSpec,
    span: ReplayRange,
    start: StartFrom,
    initial: Mapping[ShardId, Checkpoint],
    final: Mapping[ShardId, Checkpoint],
    recorder: _Recorder,
    invalid: InvalidEvents,
    elapsed: float,
    interrupted: bool,
) -> dict[str, Any]:
    def during(shard: ShardId, count: str) -> int:
        """Events counted by the shard during the replay (its start state had some)."""
        before = initial[shard].stats.get(count, 0) if shard in initial else 0
        return int(final[shard].stats.get(count, 0) - before)

    def summary(model: str) -> dict[str, Any]:
        shards = {s: c for s, c in final.items() if s.model == model}
        return {
            "events_learned": sum(during(s, "events_learned") for s in shards),
            "events_scored": sum(during(s, "events_scored") for s in shards),
            "shards": {
                f"{s.topic}/{s.partition}": {
                    "next_offset": c.next_offset,
                    "events_learned": during(s, "events_learned"),
                    "metrics": c.stats.get("metrics", {}),
                    "rolling_metrics": c.stats.get("rolling_metrics", {}),
                    "drift_detections": c.stats.get("drift_detections", 0),
                }
                for s, c in sorted(shards.items())
            },
            "metrics": _weighted(shards.values(), "metrics"),
            "rolling_metrics": _weighted(shards.values(), "rolling_metrics"),
            "series": recorder.series.get(model, []),
            "drift": recorder.drift.get(model, []),
        }

    replayed = summary(spec.name)
    events = replayed["events_scored"]
    report: dict[str, Any] = {
        "model": spec.name,
        "task": spec.task,
        "primary_metric": spec.metrics[0],
        "start": start if isinstance(start, str) else f"release:{start}",
        "range": span.describe(),
        "interrupted": interrupted,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed, 1) if elapsed else None,
        "counts": {
            "learned": replayed["events_learned"],
            "scored": events,
            "invalid": len(invalid.seen),
        },
        "invalid": invalid.seen,
        "replayed": replayed,
    }
    if any(s.model == spec.name + COMPARE_SUFFIX for s in final):
        report["compare"] = {"live": summary(spec.name + COMPARE_SUFFIX)}
    return report


def _weighted(rows: Any, key: str) -> dict[str, float | None]:
    """Metric values over shards, weighted by events learned."""
    return combine_metrics([(r.stats.get(key, {}), r.stats.get("events_learned", 0)) for r in rows])


# -- the report folder --------------------------------------------------------------


def write_report(report: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``metrics.png`` into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    png_path = folder / "metrics.png"
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """The rolling primary metric over event time, per shard, drift points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report["primary_metric"]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    runs = [("replayed", report["replayed"], "-")]
    if "compare" in report:
        runs.append(("live", report["compare"]["live"], "--"))
    for label, run, style in runs:
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for point in run["series"]:
            by_shard.setdefault(f"{point['topic']}/{point['partition']}", []).append(point)
        for shard, points in sorted(by_shard.items()):
            xs: Any = [datetime.fromtimestamp(p["event_time_ms"] / 1000, UTC) for p in points]
            ys = [p["rolling_metrics"].get(primary) for p in points]
            (line,) = ax.plot(xs, ys, style, label=f"{label} {shard}")
            drift = [d for d in run["drift"] if f"{d['topic']}/{d['partition']}" == shard]
            for d in drift:
                if d["event_time_ms"] is None:
                    continue
                when: Any = datetime.fromtimestamp(d["event_time_ms"] / 1000, UTC)
                ax.axvline(when, color=line.get_color(), alpha=0.35, linestyle=":")
            if drift:
                ax.plot([], [], ":", color=line.get_color(), label=f"drift {label} {shard}")
    ax.set_title(f"{report['model']}: rolling {primary} over event time (replay)")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel(f"rolling {primary}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def replay_consumer_config(settings: Settings) -> dict[str, Any]:
    """``KafkaConsumer`` settings for a replay: no group, so live groups are untouched."""
    k = settings.kafka
    return {
        "bootstrap_servers": settings.require_services()[0],
        "group_id": None,
        "enable_auto_commit": False,
        "client_id": f"{k.client_id}-replay",
        "max_poll_records": k.max_poll_records,
        "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
        "fetch_max_bytes": k.fetch_max_bytes,
    }


def publish(
    releases: ReleaseStore, model: str, final: Mapping[ShardId, Checkpoint], note: str
) -> int:
    """Store the replayed shards as a candidate release (never over the live shards)."""
    mine = {ShardId(model, s.topic, s.partition): c for s, c in final.items() if s.model == model}
    return releases.create(model, shards=mine, source="replay", note=note)


def parse_time(text: str, option: str) -> int:
    """Milliseconds from an ISO-8601 time given on the command line."""
    try:
        return parse_timestamp(text, option)
    except InvalidEvent:
        raise ConfigError(
            f"{option} {text!r}: give an ISO-8601 time with a zone, e.g. 2026-11-26T10:00:00Z"
        ) from None
