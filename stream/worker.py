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
from kafka.errors import KafkaConnectionError, KafkaError
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp

from livelearn.errors import (
    DeadLetterError,
    InvalidEvent,
    ServiceUnavailable,
    SnapshotError,
    StaleEpochError,
)
from livelearn.learners import (
    Learner,
    ModelSpec,
    Sanitizer,
    SnapshotCodec,
    StartPosition,
    Task,
    check_label,
    combine_metrics,
    in_holdout,
    load_learner,
    spec_changes,
    spec_fingerprint,
)
from livelearn.learners.monitor import SIGNALS
from livelearn.settings import Settings
from livelearn.store.checkpoints import Checkpoint, CheckpointStore, ShardId
from livelearn.stream.decode import Event, EventDecoder
from livelearn.stream.dlq import DeadLetterSink, as_invalid, dead_letter_record
from livelearn.stream.fetcher import KafkaRecord, KafkaStatus
from livelearn.stream.kafka_watch import KafkaWatch
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.outage import Backoff, Outage

log = logging.getLogger("livelearn.worker")

# What wrote a checkpoint: "start" pins a new shard's start position, "retry" is one that
# waited for Redis to answer again, "reclaim" writes a shard's state again after Redis
# lost its claim.
Trigger = Literal["events", "time", "revoke", "shutdown", "error", "start", "retry", "reclaim"]

# How often the loop checks that Redis answers and still holds each live shard's claim
# (one MGET): the bound on how long an idle worker takes to see a Redis that restarted.
_PROBE_S = 5.0


class Consumer(Protocol):
    """The part of kafka-python's ``KafkaConsumer`` the worker uses (stream/fetcher.py
    implements it on kafka-python, stream/_confluent.py on librdkafka)."""

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None: ...
    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def seek_to_end(self, *partitions: TopicPartition) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...
    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...
    def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]: ...
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
    # Each step: the learner method called and its arguments ("process", "predict_pending"
    # or "join", see Learner).
    since_base: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    # The next offset of the last checkpoint written (or restored): where the shard is held
    # when a dead letter past it is lost, so that no checkpoint ever passes that event.
    checkpointed_offset: int = -1
    # The checkpoint the state builds on, as (its writer's epoch, its version); None when
    # there is none. A shard assigned back to this worker keeps its learner when the store
    # still holds exactly that checkpoint and nothing is pending (`Worker._restore`).
    based_on: tuple[int, int] | None = None
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
    delayed: bool = field(init=False)
    holdout: float = field(init=False)
    reported_labels: dict[str, int] = field(init=False)
    reported_alarms: dict[str, int] = field(init=False)
    task: Task = field(init=False)
    every_events: int = field(init=False)

    def __post_init__(self) -> None:
        self.use(self.learner)
        self.sanitize = self.sanitizer.apply if self.spec.sanitize else None
        self.label_field = self.spec.label
        self.delayed = self.spec.delayed_labels is not None
        self.holdout = self.spec.holdout
        # A restored learner's counts were reported by the worker that learned them.
        self.reported_labels = dict(getattr(self.learner, "label_counts", {}))
        self.reported_alarms = self.learner.alarms
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
    # Shards fenced out (another worker, or a model reset, took their epoch): not learned;
    # the monotonic time it was seen. Re-claimed if the group still assigns the partition
    # here once it has had the time to revoke it (`Worker._reclaim_fenced`).
    fenced: dict[ShardId, float] = field(default_factory=dict)

    def commit_offset(self) -> int | None:
        """The offset every shard of this partition has checkpointed: Kafka's committed
        offset never passes a checkpoint."""
        offsets = [s.checkpointed_offset for s in self.shards] + list(self.held.values())
        offsets = [o for o in offsets if o >= 0]  # -1: no checkpoint yet, nothing to commit
        return min(offsets) if offsets else None

    def position(self) -> int | None:
        """The offset every shard of this partition has learned up to (in memory)."""
        offsets = [s.next_offset for s in self.shards] + list(self.held.values())
        offsets = [o for o in offsets if o >= 0]
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
        consumer_factory: Callable[[], Consumer] | None = None,
    ) -> None:
        if not settings.models:
            raise ValueError("no models configured: add at least one entry under 'models'")
        self._settings = settings
        self._consumer = consumer
        # Makes a new consumer when the current one fails or makes no progress (`_poll`).
        self._consumer_factory = consumer_factory
        self._consumer_lost = False
        self._kafka = KafkaWatch(
            settings.kafka, settings.outage, metrics.dependency_up.labels("kafka")
        )
        self._store = store
        self._dlq = dlq
        self._codec = codec
        self._metrics = metrics
        self._on_progress = on_progress
        self._on_batch = on_batch
        self._specs_by_topic = topic_specs(settings.models)
        self._sanitizers = {s.name: Sanitizer(s.sanitize, hash_key) for s in settings.models}
        self._decoders = {
            topic: EventDecoder(
                settings.events,
                [s.label for s in specs],
                label_only=any(s.delayed_labels is not None for s in specs),
            )
            for topic, specs in self._specs_by_topic.items()
        }
        self._partitions: dict[TopicPartition, Partition] = {}
        # Assigned partitions not claimed yet (paused until the loop claims and restores
        # them), with the time of their assignment.
        self._pending: dict[TopicPartition, float] = {}
        # Revoked partitions, kept until their pending shards are saved (a late save is
        # fenced, so it is safe) and the next assignment shows whether they come back
        # here, where a shard the store holds exactly as saved keeps its learner. With the
        # assignment count at their revocation.
        self._released: dict[TopicPartition, tuple[Partition, int]] = {}
        self._assignments = 0
        self._paused: set[TopicPartition] = set()
        # kafka-python may run an assignment callback on its IO thread after ``poll()`` has
        # returned: the bookkeeping of pending and paused partitions is shared with the loop.
        # Never held across a call that waits for that thread (an offset lookup, a poll).
        self._assigning = threading.RLock()
        self._redis = Outage("Redis", settings.outage, metrics.dependency_up.labels("redis"))
        self._next_probe = 0.0
        self._claim_retry_at = 0.0  # after a Kafka offset lookup failed
        self._claim_backoff = Backoff(settings.outage.retry_initial_s, settings.outage.retry_max_s)
        # How long a fenced-out shard waits for its partition to be revoked before this
        # worker, still its assignee, claims it again: the group's own bound to notice a
        # member that is gone.
        self._fence_grace_s = settings.kafka.session_timeout_ms / 1000
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
        self._kafka.recreated()
        log.info("worker subscribed", extra={"fields": {"topics": self.topics}})
        progress_every = self._settings.log.progress_seconds
        next_progress = time.monotonic() + progress_every
        learned_at_last = 0
        poll_ms = self._settings.kafka.poll_timeout_ms
        try:
            while not self._stop.is_set():
                self._tend(time.monotonic())
                batches = self._poll(poll_ms)
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
        """Alive when the loop turned recently; for /healthz. A Kafka consumer that makes no
        progress is replaced by the loop itself, and past its bound the worker exits (69)."""
        # The same bound Kafka puts on a consumer between polls before it gives the
        # partitions away: a loop stuck longer has lost them anyway.
        age = time.monotonic() - self._last_loop
        limit = self._settings.kafka.max_poll_interval_ms / 1000
        return age < limit, {"loop_age_s": round(age, 3), "limit_s": limit, **self._kafka.details()}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when Kafka polls succeed, Redis answers, partitions are assigned and
        claimed, every shard's snapshot was accepted and no shard is fenced out."""
        # Kafka answers the consumer (heartbeats, metadata, fetches: `KafkaWatch`), and the
        # consumer is not being replaced.
        kafka_ok = self._kafka.up and not self._consumer_lost
        # While the loop rides out an outage it says so; otherwise ask Redis.
        redis_ok = not self._redis.active and self._redis_answers()
        parts = list(self._partitions.values())
        held = [str(s) for p in parts for s in list(p.held)]
        fenced = [str(s) for p in parts for s in list(p.fenced)]
        claiming = [f"{tp.topic}/{tp.partition}" for tp in sorted(self._pending)]
        assigned = sorted([f"{p.tp.topic}/{p.tp.partition}" for p in parts] + claiming)
        # A refused snapshot leaves a partition unlearned until someone acts, a fenced shard
        # until it is re-claimed or revoked, a partition being claimed for a moment: not ready.
        ok = kafka_ok and redis_ok and bool(assigned) and not (held or fenced or claiming)
        return ok, {
            "kafka": kafka_ok,
            **self._kafka.details(),
            "redis": redis_ok,
            "assigned": assigned,
            "claiming": claiming,
            "refused_shards": held,
            "fenced_shards": fenced,
        }

    def _redis_answers(self) -> bool:
        try:
            self._store.epochs([])
        except Exception:  # whatever the store raises, Redis is not usable for this probe
            return False
        return True

    # -- Kafka ------------------------------------------------------------------------

    def _poll(self, poll_ms: int) -> dict[TopicPartition, list[KafkaRecord]]:
        """Poll the consumer, riding out Kafka's outages: a consumer that fails or makes no
        progress (`KafkaWatch`) is closed and a new one subscribes, paced by the outage's
        backoff; its assignment claims and restores the shards, exactly once.

        Raises
        ------
        ServiceUnavailable
            Past ``outage.timeout_s`` without Kafka, or without progress after a new
            consumer (exit code 69).
        """
        if self._consumer_lost:
            self._renew_consumer()
            if self._consumer_lost:
                self._stop.wait(poll_ms / 1000)
                return {}
        try:
            batches = self._consumer.poll(timeout_ms=poll_ms)
        except (ServiceUnavailable, KafkaError) as exc:
            self._drop_consumer(f"{type(exc).__name__}: {exc}")
            self._kafka.failed(exc)
            return {}
        status: KafkaStatus | None = None
        read = getattr(self._consumer, "status", None)
        if read is None:  # a consumer that does not report (a test's fake) is not watched
            return batches
        status = read()
        stall = self._kafka.observe(status, lagging=self._lagging(), delivered=bool(batches))
        if stall is not None:
            self._drop_consumer(stall)
        return batches

    def _lagging(self) -> bool:
        """Whether a partition being learned has records the consumer has not delivered."""
        for tp, part in self._partitions.items():
            if tp in self._paused or not part.shards:
                continue
            end = self._consumer.highwater(tp)
            position = min(s.next_offset for s in part.shards)
            # A trailing transaction marker takes an offset no record has: one is not lag.
            if end is not None and position >= 0 and end - position > 1:
                return True
        return False

    def _drop_consumer(self, reason: str) -> None:
        """Let every partition go as a revocation would, and close the consumer."""
        log.warning(
            "replacing the Kafka consumer: %s",
            reason,
            extra={"fields": {"partitions": _names([*self._partitions, *self._pending])}},
        )
        self._revoke([*self._partitions, *self._pending])
        consumer, self._consumer = self._consumer, _NO_CONSUMER
        self._consumer_lost = True
        try:
            consumer.close()
        except Exception as exc:  # it is going away; what matters is the new one
            log.warning("closing the Kafka consumer failed: %s", exc)

    def _renew_consumer(self) -> None:
        """Make and subscribe a new consumer, when the outage's backoff lets it."""
        if self._consumer_factory is None:
            self._kafka.failed(ServiceUnavailable("no way to make a new Kafka consumer"))
            return
        if not self._kafka.outage.due():
            self._kafka.outage.check()
            return
        try:
            consumer = self._consumer_factory()
            consumer.subscribe(self.topics, listener=_Listener(self))
        except (ServiceUnavailable, KafkaError) as exc:
            self._kafka.failed(exc)
            return
        self._consumer = consumer
        self._consumer_lost = False
        self._kafka.recreated()
        log.info("new Kafka consumer subscribed", extra={"fields": {"topics": self.topics}})

    # -- the hot path -----------------------------------------------------------------

    def _handle(self, part: Partition, records: list[KafkaRecord]) -> None:
        decode = part.decoder.decode
        shards = part.shards
        timed = False  # the first learn of each batch is timed for the latency histogram
        for rec in records:
            offset = rec.offset
            try:
                event = decode(rec.value, rec.timestamp)
            except Exception as exc:  # one policy for every failure: the dead-letter topic
                self._dead_letter(part, rec, as_invalid(exc, "decode_error"))
                for shard in shards:
                    if shard.next_offset <= offset:
                        shard.next_offset = offset + 1
                        shard.pending += 1  # the skip itself must reach a checkpoint
                continue
            for shard in shards:
                if offset < shard.next_offset:
                    continue  # already in this shard's restored checkpoint
                try:
                    features = event.features
                    label = event.fields.get(shard.label_field)
                    if label is not None:
                        check_label(shard.task, label)
                    if features is None or (label is None and shard.delayed):
                        step = self._delayed_step(shard, event, label, rec)
                    else:
                        if shard.sanitize is not None:
                            features = shard.sanitize(features)
                        step = ("process", (features, label, offset))
                        if (
                            shard.holdout
                            and label is not None
                            and in_holdout(event.id, shard.holdout)
                        ):
                            step = ("score_holdout", step[1])  # scored, never learned
                            shard.learner.score_holdout(features, label, offset)
                        elif timed:
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
                if step is not None:
                    shard.since_base.append(step)
                shard.next_offset = offset + 1
                shard.pending += 1
                if shard.pending >= shard.every_events and self._checkpoint(part, shard, "events"):
                    self._commit([part])
            if shards is not part.shards:  # a shard was dropped mid-batch
                shards = part.shards
        self._report_counts(part)

    def _delayed_step(
        self, shard: Shard, event: Event, label: Any, rec: KafkaRecord
    ) -> tuple[str, tuple[Any, ...]] | None:
        """Keep the prediction of an event whose label comes later, or join a label-only
        event to the prediction it scores; the learner call made, to redo after a rollback.
        None for a label-only event this shard has nothing to do with."""
        if not shard.delayed:
            return None  # this model takes its labels with the features
        learner = shard.learner
        ts = event.ts_ms if event.ts_ms is not None else rec.timestamp
        if event.features is None:
            if label is None:
                return None  # a label for another model of the topic
            args: tuple[Any, ...] = (event.id, label, rec.offset, ts)
            delay = learner.join(*args)
            self._metrics.label_delay.labels(shard.id.model).observe(delay)
            return "join", args
        features = event.features
        if shard.sanitize is not None:
            features = shard.sanitize(features)
        args = (event.id, features, rec.offset, ts)
        learner.predict_pending(*args)
        return "predict_pending", args

    def _processing_error(
        self, part: Partition, shard: Shard, rec: KafkaRecord, exc: Exception
    ) -> None:
        """One event made ``shard`` raise: roll the learner back to just before it, then
        dead-letter the event and go on, or hold the shard there (events.on_processing_error)."""
        offset = rec.offset
        model = shard.id.model
        if isinstance(exc, InvalidEvent):  # bad data for this model (a label of the wrong
            # type), found before the learner was touched: always a dead letter
            self._dead_letter(
                part, rec, InvalidEvent(exc.reason, f"model {model}: {exc.detail}"), model
            )
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
        invalid = as_invalid(exc, "model_error")
        detail = f"model {model}: {invalid.detail}"
        self._dead_letter(part, rec, InvalidEvent(invalid.reason, detail), model)
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
            for method, args in shard.since_base:
                getattr(learner, method)(*args)
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
            self._sync_pause()

    def _dead_letter(
        self, part: Partition, rec: KafkaRecord, exc: InvalidEvent, model: str | None = None
    ) -> None:
        """Send ``rec`` to the dead-letter topic; ``model`` is the model that refused it
        (None: no model could read it), part of the dedup key."""
        dead_letter_record(self._dlq, rec, exc, model)
        self._dead_letters_pending = True
        self._metrics.dead_letters.labels(rec.topic, exc.reason).inc()

    # -- checkpoints ------------------------------------------------------------------

    def _checkpoint_due(self, now: float) -> None:
        if self._redis.active:
            return  # retried by `_tend` once Redis answers again
        written = self._write_checkpoints(
            "time",
            lambda s: s.pending > 0 and now - s.last_checkpoint >= s.spec.checkpoint.every_seconds,
        )
        self._commit(written)

    def _write_checkpoints(self, trigger: Trigger, due: Callable[[Shard], bool]) -> list[Partition]:
        """Checkpoint every live shard for which ``due`` holds; the partitions written to."""
        written = []
        for part in list(self._partitions.values()):
            wrote = False
            for shard in list(part.shards):
                if due(shard):
                    wrote = self._checkpoint(part, shard, trigger) or wrote
            if wrote:
                written.append(part)
        return written

    def _checkpoint(self, part: Partition, shard: Shard, trigger: Trigger) -> bool:
        """Write one shard's checkpoint; True if written.

        While Redis does not answer nothing is written: the shard keeps its state and its
        pending events in memory, and is saved once Redis is back (a checkpoint lands
        whole or not at all). A write refused for a stale epoch goes to `_refused`.
        """
        if self._redis.active:
            return False
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
            version = self._store.save(shard.id, shard.epoch, blob, shard.next_offset, stats)
        except ServiceUnavailable as exc:
            self._store_failed(exc)
            return False
        except StaleEpochError as exc:
            self._store_answered()
            if self._partitions.get(part.tp) is part:
                self._refused(part, shard, exc.current)
            else:  # revoked: the new owner has claimed it and restores its last checkpoint
                log.info(
                    "revoked shard not saved: its new owner claimed it first and re-learns "
                    "its last %d events",
                    shard.pending,
                    extra={"fields": {"shard": str(shard.id)}},
                )
            return False
        self._store_answered()
        elapsed = time.perf_counter() - started
        shard.base_blob = blob
        shard.since_base.clear()
        shard.checkpointed_offset = shard.next_offset
        shard.based_on = (shard.epoch, version)
        shard.pending = 0
        shard.last_checkpoint = time.monotonic()
        m = self._metrics
        m.checkpoint_seconds.labels(shard.id.model).observe(elapsed)
        m.checkpoints.labels(shard.id.model, trigger).inc()
        if self._partitions.get(part.tp) is not part:
            return True  # revoked: its new owner reports the shard's gauges
        labels = (shard.id.model, shard.id.topic, str(shard.id.partition))
        m.checkpoint_size.labels(*labels).set(len(blob))
        m.checkpoint_time.labels(*labels).set(time.time())
        holdout = stats.get("holdout", {})
        for window, values in (
            ("cumulative", stats["metrics"]),
            ("rolling", stats["rolling_metrics"]),
            ("holdout", holdout.get("metrics", {})),
        ):
            for name, value in values.items():
                if value is not None:
                    m.model_metric.labels(*labels, name, window).set(value)
        for name, gap in holdout.get("gap", {}).items():
            if gap is not None:
                m.holdout_gap.labels(*labels, name).set(gap)
        if "monitor" in stats:
            self._report_monitor(shard, stats["monitor"], labels)
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
            tp = TopicPartition(topic, partition)
            part = self._partitions.get(tp)
            if part is None and tp in self._released:  # revoked, its late save not done
                part = self._released[tp][0]
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

    # -- assignment -------------------------------------------------------------------
    #
    # The rebalance callbacks only record what changed and pause new partitions: they run
    # on kafka-python's heartbeat path (or while the fetch process waits for the worker),
    # where a slow callback delays the whole group. Claims, restores, start offsets and
    # the saves of revoked shards run in the loop (`_tend`), where a Redis or Kafka
    # failure is retried instead of lost.

    def _assign(self, tps: Iterable[TopicPartition]) -> None:
        """Rebalance callback: record the new partitions, paused until the loop claims them."""
        started = time.perf_counter()
        now = time.monotonic()
        with self._assigning:
            self._assignments += 1
            new = [tp for tp in tps if tp not in self._partitions and tp not in self._pending]
            for tp in new:
                self._pending[tp] = now
            if new:
                self._consumer.pause(*new)
                self._paused.update(new)
        self._metrics.assigned_partitions.set(len(self._partitions) + len(self._pending))
        elapsed = self._callback_done("assigned", started)
        log.info(
            "partitions assigned",
            extra={"fields": {"partitions": _names(new), "callback_s": round(elapsed, 6)}},
        )

    def _revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Rebalance callback: let the partitions go. Their pending shards are saved from
        the loop; the save is fenced, so if the new owner claims first it is refused and
        the new owner re-learns those events from the last checkpoint, exactly once."""
        started = time.perf_counter()
        gone = []
        with self._assigning:
            for tp in tps:
                self._pending.pop(tp, None)
                self._paused.discard(tp)
                part = self._partitions.pop(tp, None)
                if part is not None:
                    self._released[tp] = (part, self._assignments)
                    gone.append(tp)
        for tp in gone:
            self._forget_gauges(self._released[tp][0])
        self._metrics.assigned_partitions.set(len(self._partitions) + len(self._pending))
        elapsed = self._callback_done("revoked", started)
        log.info(
            "partitions revoked",
            extra={"fields": {"partitions": _names(gone), "callback_s": round(elapsed, 6)}},
        )

    def _callback_done(self, callback: str, started: float) -> float:
        elapsed = time.perf_counter() - started
        self._metrics.rebalance_callback_seconds.labels(callback).observe(elapsed)
        return elapsed

    def _tend(self, now: float) -> None:
        """The worker's Redis side, between two polls: check Redis (every `_PROBE_S`, or
        at each retry during an outage), save revoked shards, claim assigned partitions
        and fenced shards.

        Raises
        ------
        ServiceUnavailable
            When Redis has not answered for longer than ``outage.timeout_s``.
        """
        if self._redis.active:
            if not self._redis.due(now) or not self._probe():
                self._redis.check()
                return
            self._save_pending()  # what waited for Redis, at once
        elif now >= self._next_probe and not self._probe():
            return
        if self._released:
            self._flush_released()
        if self._pending and now >= self._claim_retry_at:
            self._claim_pending()
        if any(part.fenced for part in self._partitions.values()):
            self._reclaim_fenced(now)

    def _probe(self) -> bool:
        """Ask Redis for every live shard's epoch: True when it answers. A shard whose claim
        Redis no longer holds (a restart that lost data, another owner) goes to `_refused`
        without waiting for its next checkpoint."""
        live = [(part, shard) for part in self._partitions.values() for shard in part.shards]
        try:
            epochs = self._store.epochs([shard.id for _, shard in live])
        except ServiceUnavailable as exc:
            self._store_failed(exc)
            return False
        self._next_probe = time.monotonic() + _PROBE_S
        self._store_answered()
        for (part, shard), epoch in zip(live, epochs, strict=True):
            if epoch != shard.epoch and any(s is shard for s in part.shards):
                self._refused(part, shard, epoch)
        return True

    def _save_pending(self) -> None:
        """Checkpoint every live shard with pending events, and commit after."""
        self._commit(self._write_checkpoints("retry", lambda s: s.pending > 0))

    def _save_revoked(self, part: Partition) -> None:
        """Checkpoint the pending shards of a revoked partition. The save is fenced: if the
        new owner claimed a shard first it is refused, and the new owner re-learns."""
        for shard in list(part.shards):
            if shard.pending:
                self._checkpoint(part, shard, "revoke")

    def _store_failed(self, exc: ServiceUnavailable) -> None:
        """Redis did not answer: pause every partition until it does (see `Outage`)."""
        began = not self._redis.active
        self._redis.failed(exc)
        if began:
            self._sync_pause()

    def _store_answered(self) -> None:
        ended = self._redis.active
        self._redis.succeeded()
        if ended:
            self._sync_pause()

    def _sync_pause(self) -> None:
        """Pause exactly the partitions that must not be fetched: those being claimed,
        those with no live shard, and every one while Redis does not answer. Polling goes
        on, so the worker keeps its place in the group."""
        with self._assigning:
            want = set(self._pending)
            for tp, part in self._partitions.items():
                if not part.shards or self._redis.active:
                    want.add(tp)
            self._paused &= self._pending.keys() | self._partitions.keys()
            pause, resume = want - self._paused, self._paused - want
            if pause:
                self._consumer.pause(*sorted(pause))
                self._paused |= pause
            if resume:
                self._consumer.resume(*sorted(resume))
                self._paused -= resume

    def _flush_released(self) -> None:
        """Save the pending shards of revoked partitions; forget those partitions once an
        assignment has come that does not give them back."""
        for tp, (part, at) in list(self._released.items()):
            self._save_revoked(part)  # nothing is written while Redis does not answer
            if tp in self._pending or at == self._assignments:
                continue  # assigned back (its shards may be kept), or no assignment yet
            del self._released[tp]
            unsaved = [str(s.id) for s in part.shards if s.pending]
            if unsaved:
                log.warning(
                    "revoked shards not saved: their new owner re-learns their events since "
                    "their last checkpoint",
                    extra={"fields": {"shards": unsaved}},
                )

    def _claim_pending(self) -> None:
        """Claim and restore each assigned partition's shards, seek it to where they resume
        and let it be fetched. A failure leaves the rest pending, retried later."""
        started = time.perf_counter()
        claimed = []
        for tp in sorted(self._pending):
            try:
                found = self._claim(tp)
            except ServiceUnavailable as exc:
                self._store_failed(exc)
                break
            except KafkaError as exc:
                delay = self._claim_backoff.next_delay()
                self._claim_retry_at = time.monotonic() + delay
                log.warning(
                    "start offsets of %s/%s not found, retrying in %.1f s: %s",
                    tp.topic,
                    tp.partition,
                    delay,
                    exc,
                )
                break
            if found is None:  # Redis stopped answering while revoked shards were saved
                break
            part, pins = found
            with self._assigning:
                del self._pending[tp]
                self._released.pop(tp, None)
                self._partitions[tp] = part
            self._claim_backoff.reset()
            for shard in pins:
                self._checkpoint(part, shard, "start")
            claimed.append(tp)
        if claimed:
            self._sync_pause()
            log.info(
                "partitions claimed",
                extra={
                    "fields": {
                        "partitions": _names(claimed),
                        "seconds": round(time.perf_counter() - started, 6),
                    }
                },
            )

    def _claim(self, tp: TopicPartition) -> tuple[Partition, list[Shard]] | None:
        """Claim the shards of ``tp`` and seek it; the partition, with the new shards whose
        start is to be checkpointed. None when Redis failed while saving revoked shards."""
        kept: dict[ShardId, Shard] = {}
        if tp in self._released:
            old = self._released[tp][0]
            self._save_revoked(old)
            if self._redis.active:
                return None
            kept = {shard.id: shard for shard in old.shards}
        part = Partition(tp, self._decoders[tp.topic], [])
        for spec in self._specs_by_topic.get(tp.topic, []):
            self._restore(part, spec, kept.get(ShardId(spec.name, tp.topic, tp.partition)))
        self._store_answered()
        pins = self._start_new_shards(part)
        offsets = [shard.next_offset for shard in part.shards]
        if offsets:
            # Each shard skips what it has learned: adding a model never moves another one.
            self._consumer.seek(tp, min(offsets))
        return part, pins

    def _restore(self, part: Partition, spec: ModelSpec, previous: Shard | None = None) -> None:
        """Claim one shard and load its checkpoint; ``previous``, this worker's learner of
        it from before a revocation, is kept when the store holds exactly what it saved."""
        shard_id = ShardId(spec.name, part.tp.topic, part.tp.partition)
        epoch, checkpoint = self._store.claim(shard_id)
        stamp = None if checkpoint is None else (checkpoint.epoch, checkpoint.version)
        if previous is not None and not previous.pending and previous.based_on == stamp:
            previous.epoch = epoch
            part.shards.append(previous)
            log.info(
                "shard kept",
                extra={
                    "fields": {
                        "shard": str(shard_id),
                        "epoch": epoch,
                        "next_offset": previous.next_offset,
                    }
                },
            )
            return
        if checkpoint is None:
            learner, next_offset = Learner(spec), -1  # placed by `_start_new_shards`
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
                based_on=stamp,
                reported_learned=stats["events_learned"],
                reported_scored=learner.events_only_scored,
                reported_drift=stats["drift_detections"],
            )
        )
        if checkpoint is not None:
            log.info(
                "shard restored",
                extra={
                    "fields": {"shard": str(shard_id), "epoch": epoch, "next_offset": next_offset}
                },
            )

    def _start_new_shards(self, part: Partition) -> list[Shard]:
        """Place each new shard (no checkpoint) where its spec's ``start`` says: the
        partition's first offset, its end, or the first offset at or after a time.

        Returns the new shards that do not start at the beginning: they are checkpointed
        at once, so that a restart resumes them there instead of looking again.
        """
        pins = []
        found: dict[StartPosition, int] = {}
        for shard in part.shards:
            if shard.next_offset >= 0:
                continue
            start = shard.spec.start or self._settings.kafka.auto_offset_reset
            if start not in found:
                found[start] = self._start_offset(part.tp, start)
            shard.next_offset = found[start]
            if start != "earliest":
                shard.pending = max(shard.pending, 1)
                pins.append(shard)
            log.info(
                "shard started fresh",
                extra={
                    "fields": {
                        "shard": str(shard.id),
                        "epoch": shard.epoch,
                        "start": start if isinstance(start, str) else start.isoformat(),
                        "next_offset": shard.next_offset,
                    }
                },
            )
        return pins

    def _start_offset(self, tp: TopicPartition, start: StartPosition) -> int:
        """The offset ``start`` names on ``tp`` now (a Kafka round trip)."""
        if start == "earliest":
            return int(self._consumer.beginning_offsets([tp])[tp])
        if not isinstance(start, str):
            at = self._consumer.offsets_for_times({tp: int(start.timestamp() * 1000)}).get(tp)
            if at is not None:
                return int(at.offset)
        return int(self._consumer.end_offsets([tp])[tp])  # latest, or no event since then

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
            with contextlib.suppress(KeyError):
                m.pending_labels.remove(*labels)
            for signal in SIGNALS:
                with contextlib.suppress(KeyError):
                    m.signal.remove(*labels, signal)
            for name in spec.metrics:
                for window in ("cumulative", "rolling", "holdout"):
                    with contextlib.suppress(KeyError):
                        m.model_metric.remove(*labels, name, window)
                with contextlib.suppress(KeyError):
                    m.holdout_gap.remove(*labels, name)

    def _refused(self, part: Partition, shard: Shard, current: int | None) -> None:
        """The store no longer holds ``shard``'s claim: a save was refused, or the probe saw
        another epoch. Either way it is counted, logged and never silently dropped.

        Epochs never repeat (`store.checkpoints`), so no epoch, or an older one, means
        Redis lost the claim (a restart without its data, or from an older snapshot) and
        nobody has claimed the shard since: the worker takes it back and writes the state
        it holds, which has every event up to its next offset exactly once. A newer epoch
        means another worker, or a model reset, claimed it: the shard stops learning
        (/readyz lists it) and waits to be revoked; if the group still assigns the
        partition here after `_fence_grace_s`, `_reclaim_fenced` claims it again.
        """
        if current is None or current < shard.epoch:
            try:
                epoch = self._store.reclaim(shard.id, current)
            except ServiceUnavailable as exc:
                self._store_failed(exc)
                return  # the next probe finds the claim missing and tries again
            if epoch is not None:
                self._metrics.stale_epochs.labels(shard.id.model).inc()
                log.warning(
                    "Redis lost the claim on shard %s (epoch %d, found %s: restarted without "
                    "its data?); claimed it again with epoch %d and writes its state, up to "
                    "offset %d, from memory",
                    shard.id,
                    shard.epoch,
                    current,
                    epoch,
                    shard.next_offset,
                    extra={"fields": {"shard": str(shard.id)}},
                )
                shard.epoch = epoch
                shard.pending = max(shard.pending, 1)
                self._checkpoint(part, shard, "reclaim")
                return
            current = None  # claimed by someone else meanwhile
        self._metrics.stale_epochs.labels(shard.id.model).inc()
        part.shards = [s for s in part.shards if s is not shard]
        part.fenced[shard.id] = time.monotonic()
        log.error(
            "shard %s fenced out: its epoch %d was replaced (%s) by another worker or a model "
            "reset; it stops learning, and is claimed again from its checkpoint in %.0f s "
            "(kafka.session_timeout_ms) unless its partition is revoked meanwhile",
            shard.id,
            shard.epoch,
            "unknown" if current is None else current,
            self._fence_grace_s,
            extra={"fields": {"shard": str(shard.id), "pending_events": shard.pending}},
        )
        self._sync_pause()

    def _reclaim_fenced(self, now: float) -> None:
        """Claim fenced shards again where the group still assigns their partition here
        after `_fence_grace_s`: by Kafka's word nobody else owns it. The partition goes
        through a claim as if newly assigned (paused, claimed, sought, resumed); its other
        shards are saved and kept."""
        for tp, part in list(self._partitions.items()):
            if not part.fenced or now - min(part.fenced.values()) < self._fence_grace_s:
                continue
            log.warning(
                "claiming fenced shards again: the group still assigns their partition to this "
                "worker",
                extra={"fields": {"shards": [str(s) for s in part.fenced]}},
            )
            with self._assigning:
                del self._partitions[tp]
                self._released[tp] = (part, self._assignments)
                self._pending[tp] = now
        self._sync_pause()

    def _shutdown(self) -> None:
        try:
            if self._redis.active:  # a last try before giving up the unsaved state
                self._redis.retry_now()
                self._probe()
            released = [part for part, _ in self._released.values()]
            if self._redis.active:
                unsaved = [
                    str(s.id)
                    for part in [*self._partitions.values(), *released]
                    for s in part.shards
                    if s.pending
                ]
                log.warning(
                    "Redis does not answer at shutdown: shards not checkpointed resume from "
                    "their last checkpoint",
                    extra={"fields": {"shards": unsaved}},
                )
            else:
                for part in released:
                    self._save_revoked(part)
                self._write_checkpoints("shutdown", lambda s: True)
                self._commit(list(self._partitions.values()), wait=True)
        finally:
            self._partitions.clear()
            self._released.clear()
            self._pending.clear()
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
            only_scored = learner.events_only_scored
            if only_scored != shard.reported_scored:
                events.labels(shard.id.model, "scored").inc(only_scored - shard.reported_scored)
                shard.reported_scored = only_scored
            if shard.delayed:
                self._report_labels(shard)
            detections = learner.drift_detections
            if detections != shard.reported_drift:
                drift.labels(shard.id.model, shard.id.topic, str(shard.id.partition)).inc(
                    detections - shard.reported_drift
                )
                shard.reported_drift = detections

    def _report_monitor(
        self, shard: Shard, monitor: dict[str, Any], labels: tuple[str, str, str]
    ) -> None:
        """The label-free signals of the last finished window, and new alarms."""
        m = self._metrics
        for signal, value in monitor["signals"].items():
            if value is not None:
                m.signal.labels(*labels, signal).set(value)
        for signal, grown in _growth(shard.reported_alarms, monitor["alarms"]).items():
            m.alarms.labels(shard.id.model, signal).inc(grown)
            log.warning(
                "label-free alarm: %s",
                signal,
                extra={
                    "fields": {
                        "shard": str(shard.id),
                        "value": monitor["signals"].get(signal),
                        "feature": monitor["shifted_feature"],
                    }
                },
            )

    def _report_labels(self, shard: Shard) -> None:
        """Joined and expired predictions since the last report, and those pending."""
        model = shard.id.model
        for outcome, grown in _growth(shard.reported_labels, shard.learner.label_counts).items():
            self._metrics.labels.labels(model, outcome).inc(grown)
        self._metrics.pending_labels.labels(model, shard.id.topic, str(shard.id.partition)).set(
            shard.learner.pending_labels
        )

    def _update_lag(self, part: Partition) -> None:
        end = self._consumer.highwater(part.tp)
        offset = part.position()
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


class _NoConsumer:
    """The worker's consumer between a failed one and its replacement: nothing to read."""

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        raise ServiceUnavailable("no Kafka consumer")

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]:
        return {}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        pass

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        pass

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        pass

    def pause(self, *partitions: TopicPartition) -> None:
        pass

    def resume(self, *partitions: TopicPartition) -> None:
        pass

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        raise KafkaConnectionError("no Kafka consumer")

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        raise KafkaConnectionError("no Kafka consumer")

    def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        raise KafkaConnectionError("no Kafka consumer")

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        pass

    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[dict[TopicPartition, OffsetAndMetadata], object], None],
    ) -> None:
        pass

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    def close(self) -> None:
        pass


_NO_CONSUMER: Consumer = _NoConsumer()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records revoked and assigned partitions; the worker loop does the rest.

    ``ProcessConsumer`` and ``ConfluentConsumer`` call them on the worker's thread, inside
    ``poll()``. kafka-python calls them on its IO thread: a revocation while the worker's
    thread waits in ``poll()``, but an assignment may finish after ``poll()`` gave up
    waiting for it, so the bookkeeping they share with the loop is guarded
    (``Worker._assigning``).
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


def _names(tps: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in tps]


def topic_specs(models: Iterable[ModelSpec]) -> dict[str, list[ModelSpec]]:
    """Models by the topics they read."""
    out: dict[str, list[ModelSpec]] = {}
    for spec in models:
        for topic in spec.topics:
            out.setdefault(topic, []).append(spec)
    return out


def _growth(reported: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """How much each count grew since ``reported``, which then holds ``counts``. A count
    that fell (the learner went back to a checkpoint) is taken as the new base, unreported."""
    grown = {k: n - reported.get(k, 0) for k, n in counts.items() if n > reported.get(k, 0)}
    reported.update(counts)
    return grown
