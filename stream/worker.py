"""The learning worker: Kafka records → decode → sanitize → learner shards → checkpoints.

A shard is one model's state for one topic-partition (docs/architecture.md). On assignment
the worker claims each shard (bumping its fencing epoch), restores its last
checkpoint and seeks to the offset it covers; it checkpoints every N events,
every T seconds, on revoke and on shutdown, and commits Kafka offsets after.
Because model state and offsets are written together, after a crash at any
point every event's effect is in the model exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from learners import (
    Learner,
    ModelSpec,
    Sanitizer,
    SnapshotCodec,
    Task,
    check_label,
    combine_metrics,
    load_learner,
    spec_changes,
    spec_fingerprint,
)
from livelearn.errors import DeadLetterError, InvalidEvent, SnapshotError, StaleEpochError
from settings import Settings
from store.checkpoints import Checkpoint, CheckpointStore, ShardId
from stream.decode import EventDecoder
from stream.dlq import DeadLetterSink
from stream.fetcher import KafkaRecord
from stream.metrics import WorkerMetrics

log = logging.getLogger("livelearn.worker")

Trigger = Literal["events", "time", "revoke", "shutdown", "error"]


class Consumer(Protocol):
    """The part of kafka-python's ``KafkaConsumer`` the worker uses."""

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None: ...
    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def seek_to_end(self, *partitions: TopicPartition) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None: ...
    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[dict[TopicPartition, OffsetAndMetadata], object], None],
    ) -> object: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def close(self) -> None: ...


@dataclass
class Shard:
    """One model's learner for one topic-partition, and its checkpoint bookkeeping."""

    id: ShardId
    spec: ModelSpec
    learner: Learner
    sanitizer: Sanitizer
    epoch: int
    next_offset: int
    # The signed snapshot of the last checkpoint (or of the fresh learner) and the events
    # learned since: after an error mid-event the learner is rebuilt from them, exactly as
    # if it had never seen that event (`Worker._roll_back`).
    base_blob: bytes = b""
    since_base: list[tuple[Mapping[str, Any], Any, int]] = field(default_factory=list)
    # The next offset of the last checkpoint written (or restored): where the shard is held
    # when a dead letter past it is lost, so that no checkpoint ever passes that event.
    checkpointed_offset: int = -1
    pending: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)
    reported_learned: int = 0
    reported_scored: int = 0
    reported_drift: int = 0
    # Looked up once, not per event: the loop reads them for every event
    # (bench/bench_worker.py measures its rate).
    process: Callable[[Mapping[str, Any], Any, int], Any] = field(init=False)
    sanitize: Callable[[Mapping[str, Any]], dict[str, Any]] | None = field(init=False)
    label_field: str = field(init=False)
    task: Task = field(init=False)
    every_events: int = field(init=False)

    def __post_init__(self) -> None:
        self.use(self.learner)
        self.sanitize = self.sanitizer.apply if self.spec.sanitize else None
        self.label_field = self.spec.label
        self.task = self.spec.task
        self.every_events = self.spec.checkpoint.every_events

    def use(self, learner: Learner) -> None:
        """Learn with ``learner`` from now on (a restored or rebuilt one)."""
        self.learner = learner
        self.process = learner.process


@dataclass
class Partition:
    """An assigned topic-partition: its decoder, live shards and refused ones."""

    tp: TopicPartition
    decoder: EventDecoder
    shards: list[Shard]
    # Shards whose snapshot was refused: not learned, their stored offset kept.
    held: dict[ShardId, int] = field(default_factory=dict)

    def commit_offset(self) -> int | None:
        """The offset every shard of this partition has covered."""
        offsets = [s.next_offset for s in self.shards] + list(self.held.values())
        offsets = [o for o in offsets if o >= 0]  # -1: no checkpoint yet, nothing to commit
        return min(offsets) if offsets else None


@dataclass(frozen=True)
class ShardProgress:
    """A shard's counts, for progress lines and the demo."""

    shard: ShardId
    next_offset: int
    events_learned: int
    events_scored: int
    metrics: dict[str, float | None]
    rolling_metrics: dict[str, float | None]


class Worker:
    """Runs the test-then-train loop for every model subscribed to the assigned partitions."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        store: CheckpointStore,
        dlq: DeadLetterSink,
        codec: SnapshotCodec,
        hash_key: bytes,
        metrics: WorkerMetrics,
        *,
        on_progress: Callable[[list[ShardProgress], float], None] | None = None,
        on_batch: Callable[[Partition, list[KafkaRecord]], None] | None = None,
    ) -> None:
        if not settings.models:
            raise ValueError("no models configured: add at least one entry under 'models'")
        self._settings = settings
        self._consumer = consumer
        self._store = store
        self._dlq = dlq
        self._codec = codec
        self._metrics = metrics
        self._on_progress = on_progress
        self._on_batch = on_batch
        self._specs_by_topic = topic_specs(settings.models)
        self._sanitizers = {s.name: Sanitizer(s.sanitize, hash_key) for s in settings.models}
        self._decoders = {
            topic: EventDecoder(settings.events, [s.label for s in specs])
            for topic, specs in self._specs_by_topic.items()
        }
        self._partitions: dict[TopicPartition, Partition] = {}
        self._stop = threading.Event()
        self._last_loop = time.monotonic()
        self._last_poll_ok = 0.0
        self._dead_letters_pending = False

    # -- public surface ---------------------------------------------------------------

    @property
    def topics(self) -> list[str]:
        """Topics the worker subscribes to."""
        return sorted(self._specs_by_topic)

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the loop to finish: it checkpoints every shard and returns."""
        self._stop.set()

    def run(self) -> None:
        """Consume until ``stop()``; then checkpoint every shard, commit and close."""
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        log.info("worker subscribed", extra={"fields": {"topics": self.topics}})
        progress_every = self._settings.log.progress_seconds
        next_progress = time.monotonic() + progress_every
        learned_at_last = 0
        poll_ms = self._settings.kafka.poll_timeout_ms
        try:
            while not self._stop.is_set():
                batches = self._consumer.poll(timeout_ms=poll_ms)
                now = time.monotonic()
                self._last_loop = now
                self._last_poll_ok = time.time()
                self._metrics.last_poll.set(self._last_poll_ok)
                for tp, records in batches.items():
                    part = self._partitions.get(tp)
                    if part is not None and records:
                        self._handle(part, records)
                        if self._on_batch is not None:
                            self._on_batch(part, records)
                        self._update_lag(part)
                self._checkpoint_due(time.monotonic())
                if now >= next_progress:
                    learned_at_last = self._report_progress(learned_at_last, progress_every)
                    next_progress = now + progress_every
        finally:
            self._shutdown()

    def positions(self) -> dict[ShardId, int]:
        """Each live shard's next offset; safe to call from another thread."""
        return {
            shard.id: shard.next_offset
            for part in list(self._partitions.values())
            for shard in list(part.shards)
        }

    def progress(self) -> list[ShardProgress]:
        """Counts and metrics of every live shard (call it on the worker's thread)."""
        out = []
        for part in list(self._partitions.values()):
            for shard in list(part.shards):
                stats = shard.learner.stats()
                out.append(
                    ShardProgress(
                        shard.id,
                        shard.next_offset,
                        stats["events_learned"],
                        stats["events_scored"],
                        stats["metrics"],
                        stats["rolling_metrics"],
                    )
                )
        return out

    def health(self) -> tuple[bool, dict[str, object]]:
        """Alive when the loop turned recently; for /healthz."""
        # The same bound Kafka puts on a consumer between polls before it gives the
        # partitions away: a loop stuck longer has lost them anyway.
        age = time.monotonic() - self._last_loop
        limit = self._settings.kafka.max_poll_interval_ms / 1000
        return age < limit, {"loop_age_s": round(age, 3), "limit_s": limit}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when Kafka polls succeed, Redis answers, partitions are assigned and
        every shard's snapshot was accepted."""
        poll_age = time.time() - self._last_poll_ok
        kafka_ok = poll_age < max(10.0, 5 * self._settings.kafka.poll_timeout_ms / 1000)
        redis_ok = _ping(self._store)
        held = [str(s) for p in self._partitions.values() for s in p.held]
        assigned = [f"{tp.topic}/{tp.partition}" for tp in self._partitions]
        # A refused snapshot leaves a partition unlearned until someone acts: not ready.
        ok = kafka_ok and redis_ok and bool(assigned) and not held
        return ok, {
            "kafka": kafka_ok,
            "redis": redis_ok,
            "assigned": assigned,
            "refused_shards": held,
        }

    # -- the hot path -----------------------------------------------------------------

    def _handle(self, part: Partition, records: list[KafkaRecord]) -> None:
        decode = part.decoder.decode
        shards = part.shards
        timed = False  # the first learn of each batch is timed for the latency histogram
        for rec in records:
            offset = rec.offset
            try:
                event = decode(rec.value)
            except Exception as exc:  # one policy for every failure: the dead-letter topic
                self._dead_letter(part, rec, _as_invalid(exc, "decode_error"))
                for shard in shards:
                    if shard.next_offset <= offset:
                        shard.next_offset = offset + 1
                continue
            for shard in shards:
                if offset < shard.next_offset:
                    continue  # already in this shard's restored checkpoint
                try:
                    features = event.features
                    if shard.sanitize is not None:
                        features = shard.sanitize(features)
                    label = event.fields.get(shard.label_field)
                    if label is not None:
                        check_label(shard.task, label)
                    if timed:
                        shard.process(features, label, offset)
                    else:
                        timed = True
                        started = time.perf_counter()
                        shard.process(features, label, offset)
                        self._metrics.learn_seconds.labels(shard.id.model).observe(
                            time.perf_counter() - started
                        )
                except Exception as exc:
                    self._processing_error(part, shard, rec, exc)
                    continue
                shard.since_base.append((features, label, offset))
                shard.next_offset = offset + 1
                shard.pending += 1
                if shard.pending >= shard.every_events:
                    self._checkpoint(part, shard, "events")
                    self._commit([part])
            if shards is not part.shards:  # a shard was dropped mid-batch
                shards = part.shards
        self._report_counts(part)

    def _processing_error(
        self, part: Partition, shard: Shard, rec: KafkaRecord, exc: Exception
    ) -> None:
        """One event made ``shard`` raise: roll the learner back to just before it, then
        dead-letter the event and go on, or hold the shard there (events.on_processing_error)."""
        offset = rec.offset
        model = shard.id.model
        if isinstance(exc, InvalidEvent):  # bad data for this model (a label of the wrong
            # type), found before the learner was touched: always a dead letter
            self._dead_letter(part, rec, InvalidEvent(exc.reason, f"model {model}: {exc.detail}"))
            shard.next_offset = offset + 1
            shard.pending += 1
            return
        if not self._roll_back(part, shard):
            return
        if self._settings.events.on_processing_error == "stop_shard":
            self._metrics.processing_errors.labels(model, "shard_stopped").inc()
            log.error(
                "shard stopped at an event it cannot process (events.on_processing_error: "
                "stop_shard): %s: %s",
                type(exc).__name__,
                exc,
                extra={"fields": {"shard": str(shard.id), "offset": offset}},
            )
            if shard.pending:
                self._checkpoint(part, shard, "error")  # what it learned before that event
            if any(s is shard for s in part.shards):  # not held already for a lost dead letter
                self._hold(part, shard, offset)
            return
        self._metrics.processing_errors.labels(model, "dead_lettered").inc()
        invalid = _as_invalid(exc, "model_error")
        detail = f"model {model}: {invalid.detail}"
        self._dead_letter(part, rec, InvalidEvent(invalid.reason, detail))
        shard.next_offset = offset + 1
        shard.pending += 1  # the skip itself must reach a checkpoint
        # The rebuilt learner becomes the base (in memory only), so that a run of bad
        # events costs one rebuild each, not a replay of everything since the checkpoint.
        shard.base_blob = self._codec.encode(shard.learner)
        shard.since_base.clear()

    def _roll_back(self, part: Partition, shard: Shard) -> bool:
        """Rebuild ``shard``'s learner from its last checkpoint and the events learned since,
        so that a half-done update leaves no trace; False (shard held) if that fails."""
        try:
            learner = load_learner(self._codec, shard.base_blob)
            for features, label, offset in shard.since_base:
                learner.process(features, label, offset)
        except Exception:
            log.exception(
                "shard cannot be rebuilt after an error; holding it at its checkpoint",
                extra={"fields": {"shard": str(shard.id)}},
            )
            self._metrics.processing_errors.labels(shard.id.model, "shard_stopped").inc()
            self._hold(part, shard, shard.checkpointed_offset)
            return False
        shard.use(learner)
        return True

    def _hold(self, part: Partition, shard: Shard, offset: int) -> None:
        """Stop learning ``shard``; it stays held at ``offset`` (reported by /readyz)."""
        part.shards = [s for s in part.shards if s is not shard]
        part.held[shard.id] = offset
        if not part.shards:
            self._consumer.pause(part.tp)

    def _dead_letter(self, part: Partition, rec: KafkaRecord, exc: InvalidEvent) -> None:
        self._dlq.send(
            rec.topic,
            rec.value,
            rec.key,
            reason=exc.reason,
            detail=exc.detail,
            source=(rec.topic, rec.partition, rec.offset),
        )
        self._dead_letters_pending = True
        self._metrics.dead_letters.labels(rec.topic, exc.reason).inc()
        log.warning(
            "event sent to the dead-letter topic",
            extra={
                "fields": {
                    "topic": rec.topic,
                    "partition": rec.partition,
                    "offset": rec.offset,
                    "reason": exc.reason,
                    "detail": exc.detail,
                }
            },
        )

    # -- checkpoints ------------------------------------------------------------------

    def _checkpoint_due(self, now: float) -> None:
        due: list[Partition] = []
        for part in list(self._partitions.values()):
            wrote = False
            for shard in list(part.shards):
                if (
                    shard.pending
                    and now - shard.last_checkpoint >= shard.spec.checkpoint.every_seconds
                ):
                    wrote = self._checkpoint(part, shard, "time") or wrote
            if wrote:
                due.append(part)
        self._commit(due)

    def _checkpoint(self, part: Partition, shard: Shard, trigger: Trigger) -> bool:
        """Write one shard's checkpoint; on a stale epoch drop the shard. True if written."""
        if self._dead_letters_pending:
            # Dead letters must be durable before a checkpoint moves past them.
            try:
                self._dlq.flush()
            except DeadLetterError as exc:
                self._lost_dead_letters(exc)
            self._dead_letters_pending = False
            if not any(s is shard for s in part.shards):  # held: a dead letter of it was lost
                return False
        started = time.perf_counter()
        blob = self._codec.encode(shard.learner)
        stats = shard.learner.stats()
        try:
            self._store.save(shard.id, shard.epoch, blob, shard.next_offset, stats)
        except StaleEpochError as exc:
            self._metrics.stale_epochs.labels(shard.id.model).inc()
            log.error("shard dropped: %s", exc, extra={"fields": {"shard": str(shard.id)}})
            part.shards = [s for s in part.shards if s is not shard]
            if not part.shards:
                self._consumer.pause(part.tp)
            return False
        elapsed = time.perf_counter() - started
        shard.base_blob = blob
        shard.since_base.clear()
        shard.checkpointed_offset = shard.next_offset
        shard.pending = 0
        shard.last_checkpoint = time.monotonic()
        m = self._metrics
        labels = (shard.id.model, shard.id.topic, str(shard.id.partition))
        m.checkpoint_seconds.labels(shard.id.model).observe(elapsed)
        m.checkpoints.labels(shard.id.model, trigger).inc()
        m.checkpoint_size.labels(*labels).set(len(blob))
        m.checkpoint_time.labels(*labels).set(time.time())
        for window, values in (
            ("cumulative", stats["metrics"]),
            ("rolling", stats["rolling_metrics"]),
        ):
            for name, value in values.items():
                if value is not None:
                    m.model_metric.labels(*labels, name, window).set(value)
        log.debug(
            "checkpoint written",
            extra={
                "fields": {
                    "shard": str(shard.id),
                    "next_offset": shard.next_offset,
                    "bytes": len(blob),
                    "seconds": round(elapsed, 6),
                    "trigger": trigger,
                }
            },
        )
        return True

    def _lost_dead_letters(self, exc: DeadLetterError) -> None:
        """Hold every shard of each partition whose dead letter was lost at its last
        checkpoint: none may pass the event, and after a restart it is sent again."""
        for topic, partition, offset in exc.sources:
            self._metrics.dead_letter_failures.labels(topic).inc()
            part = self._partitions.get(TopicPartition(topic, partition))
            if part is None:
                continue
            log.error(
                "dead letter lost: partition stopped at its last checkpoint: %s",
                exc,
                extra={"fields": {"topic": topic, "partition": partition, "offset": offset}},
            )
            for shard in list(part.shards):
                self._hold(part, shard, shard.checkpointed_offset)

    def _commit(self, parts: Iterable[Partition], wait: bool = False) -> None:
        """Commit Kafka offsets (for lag monitoring; the checkpoints are the truth).

        In the loop and on revoke the commit is asynchronous: a synchronous one waits for a
        broker round trip, time the loop would otherwise spend learning many events, and
        is refused inside a rebalance listener. On shutdown it waits, so the group sees
        the final offsets.
        """
        offsets = {}
        for part in parts:
            offset = part.commit_offset()
            if offset is not None:
                offsets[part.tp] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            if wait:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=_log_commit_failure)
        except Exception as exc:  # a commit during a rebalance may fail; harmless here
            log.warning("offset commit failed: %s", exc)

    def _checkpoint_partitions(self, parts: Iterable[Partition], trigger: Trigger) -> None:
        parts = list(parts)
        for part in parts:
            for shard in list(part.shards):
                if shard.pending or trigger == "shutdown":
                    self._checkpoint(part, shard, trigger)
        # kafka-python 3 runs rebalance listeners on its IO thread, where a blocking
        # commit is refused; there the commit is sent without waiting.
        self._commit(parts, wait=trigger == "shutdown")

    # -- assignment -------------------------------------------------------------------

    def _assign(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            if tp in self._partitions:
                continue
            specs = self._specs_by_topic.get(tp.topic, [])
            part = Partition(tp, self._decoders[tp.topic], [])
            for spec in specs:
                self._restore(part, spec)
            self._partitions[tp] = part
            seek = [s.next_offset for s in part.shards]
            known = [offset for offset in seek if offset >= 0]
            earliest = self._settings.kafka.auto_offset_reset == "earliest"
            if not part.shards:
                self._consumer.pause(tp)
            elif known and (len(known) == len(seek) or not earliest):
                # A shard with a checkpoint never moves because another model is new on
                # the topic: with "latest", a new shard starts where the earliest of them
                # resumes, not at the end, which would skip the others' events.
                self._consumer.seek(tp, min(known))
            elif earliest:  # shards with a checkpoint skip what they have learned
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
        self._metrics.assigned_partitions.set(len(self._partitions))
        log.info(
            "partitions assigned",
            extra={
                "fields": {"partitions": [f"{t.topic}/{t.partition}" for t in self._partitions]}
            },
        )

    def _restore(self, part: Partition, spec: ModelSpec) -> None:
        shard_id = ShardId(spec.name, part.tp.topic, part.tp.partition)
        epoch, checkpoint = self._store.claim(shard_id)
        if checkpoint is None:
            learner, next_offset = Learner(spec), -1
            base_blob = self._codec.encode(learner)
        else:
            base_blob = checkpoint.blob
            try:
                learner = load_learner(self._codec, checkpoint.blob)
            except SnapshotError as exc:
                self._metrics.snapshots_refused.labels(spec.name).inc()
                log.error(
                    "snapshot refused, shard not loaded: %s",
                    exc,
                    extra={"fields": {"shard": str(shard_id), "version": checkpoint.version}},
                )
                part.held[shard_id] = checkpoint.next_offset
                return
            if spec_fingerprint(learner.spec) != spec_fingerprint(spec):
                self._refuse_changed_spec(part, shard_id, learner.spec, spec, checkpoint)
                return
            next_offset = checkpoint.next_offset
        stats = learner.stats()
        part.shards.append(
            Shard(
                shard_id,
                spec,
                learner,
                self._sanitizers[spec.name],
                epoch,
                next_offset,
                base_blob=base_blob,
                checkpointed_offset=next_offset,
                reported_learned=stats["events_learned"],
                reported_scored=stats["events_scored"] - stats["events_learned"],
                reported_drift=stats["drift_detections"],
            )
        )
        log.info(
            "shard restored" if checkpoint else "shard started fresh",
            extra={"fields": {"shard": str(shard_id), "epoch": epoch, "next_offset": next_offset}},
        )

    def _refuse_changed_spec(
        self,
        part: Partition,
        shard_id: ShardId,
        restored: ModelSpec,
        configured: ModelSpec,
        checkpoint: Checkpoint,
    ) -> None:
        """Hold a shard whose checkpoint was learned under another spec (reported by /readyz)."""
        changed = ", ".join(spec_changes(restored, configured))
        self._metrics.spec_mismatches.labels(configured.name).inc()
        log.error(
            "model %r: the configured spec changes %s from the checkpointed one, shard %s not "
            "loaded; to train the model afresh with the new spec run `livelearn models reset "
            "%s --yes` and restart the workers, or restore the previous spec to resume it",
            configured.name,
            changed,
            shard_id,
            configured.name,
            extra={"fields": {"shard": str(shard_id), "version": checkpoint.version}},
        )
        part.held[shard_id] = checkpoint.next_offset

    def _revoke(self, tps: Iterable[TopicPartition]) -> None:
        parts = [p for tp in tps if (p := self._partitions.get(tp)) is not None]
        self._checkpoint_partitions(parts, "revoke")
        for part in parts:
            del self._partitions[part.tp]
            self._forget_gauges(part)
        self._metrics.assigned_partitions.set(len(self._partitions))

    def _forget_gauges(self, part: Partition) -> None:
        """Drop a departed partition's gauges: its new owner reports them now."""
        m = self._metrics
        tp = (part.tp.topic, str(part.tp.partition))
        with contextlib.suppress(KeyError):  # nothing was reported for it yet
            m.consumer_lag.remove(*tp)
        for spec in self._specs_by_topic.get(part.tp.topic, []):
            labels = (spec.name, *tp)
            for gauge in (m.checkpoint_size, m.checkpoint_time):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            for name in spec.metrics:
                for window in ("cumulative", "rolling"):
                    with contextlib.suppress(KeyError):
                        m.model_metric.remove(*labels, name, window)

    def _shutdown(self) -> None:
        try:
            self._checkpoint_partitions(self._partitions.values(), "shutdown")
        finally:
            self._partitions.clear()
            self._consumer.close()
            log.info("worker stopped")

    # -- reporting --------------------------------------------------------------------

    def _report_counts(self, part: Partition) -> None:
        events = self._metrics.events
        drift = self._metrics.drift
        for shard in part.shards:
            learner = shard.learner
            if learner.events_learned != shard.reported_learned:
                events.labels(shard.id.model, "learned").inc(
                    learner.events_learned - shard.reported_learned
                )
                shard.reported_learned = learner.events_learned
            only_scored = learner.events_scored - learner.events_learned
            if only_scored != shard.reported_scored:
                events.labels(shard.id.model, "scored").inc(only_scored - shard.reported_scored)
                shard.reported_scored = only_scored
            detections = learner.drift_detections
            if detections != shard.reported_drift:
                drift.labels(shard.id.model, shard.id.topic, str(shard.id.partition)).inc(
                    detections - shard.reported_drift
                )
                shard.reported_drift = detections

    def _update_lag(self, part: Partition) -> None:
        end = self._consumer.highwater(part.tp)
        offset = part.commit_offset()
        if end is not None and offset is not None:
            self._metrics.consumer_lag.labels(part.tp.topic, str(part.tp.partition)).set(
                max(0, end - offset)
            )

    def _report_progress(self, learned_before: int, seconds: float) -> int:
        progress = self.progress()
        learned = sum(p.events_learned for p in progress)
        if self._on_progress is not None:
            self._on_progress(progress, (learned - learned_before) / seconds)
        else:
            log.info(
                "progress",
                extra={
                    "fields": {
                        "events_learned": learned,
                        "events_per_s": round((learned - learned_before) / seconds, 1),
                        "models": summarize(progress),
                    }
                },
            )
        return learned


def summarize(progress: Sequence[ShardProgress]) -> dict[str, dict[str, Any]]:
    """Per model: events learned and the primary metric, weighted by events learned."""
    by_model: dict[str, list[ShardProgress]] = {}
    for p in progress:
        by_model.setdefault(p.shard.model, []).append(p)
    return {
        model: {
            "events_learned": sum(p.events_learned for p in shards),
            "shards": len(shards),
            "metrics": combine_metrics([(p.metrics, p.events_learned) for p in shards]),
            "rolling_metrics": combine_metrics(
                [(p.rolling_metrics, p.events_learned) for p in shards]
            ),
        }
        for model, shards in by_model.items()
    }


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Checkpoint on revoke; claim, restore and seek on assignment.

    They run inside ``poll()``: kafka-python calls them on its IO thread while the
    worker's thread waits in ``poll()``, and ``ProcessConsumer`` on the worker's thread
    itself, so they never run concurrently with the event loop.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._worker._revoke(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._worker._assign(assigned)


def _log_commit_failure(offsets: dict[TopicPartition, OffsetAndMetadata], result: object) -> None:
    if isinstance(result, Exception):
        log.warning("offset commit failed: %s", result)


def _ping(store: CheckpointStore) -> bool:
    ping = getattr(store, "ping", None)
    if ping is None:
        return True
    try:
        return bool(ping())
    except Exception:
        return False


def topic_specs(models: Iterable[ModelSpec]) -> dict[str, list[ModelSpec]]:
    """Models by the topics they read."""
    out: dict[str, list[ModelSpec]] = {}
    for spec in models:
        for topic in spec.topics:
            out.setdefault(topic, []).append(spec)
    return out


def _as_invalid(exc: Exception, reason: str) -> InvalidEvent:
    """``exc`` as the dead letter's reason and detail: its own for an `InvalidEvent`, else
    ``reason`` with the exception's type and message."""
    if isinstance(exc, InvalidEvent):
        return exc
    return InvalidEvent(reason, f"{type(exc).__name__}: {exc}")
