"""The learning worker: Kafka records → decode → sanitize → learner shards → checkpoints.

A shard is one model's state for one topic-partition (docs/architecture.md). On assignment
the worker claims each shard (bumping its fencing epoch), restores its last
checkpoint and seeks to the offset it covers; it checkpoints every N events,
every T seconds, on revoke and on shutdown, and commits Kafka offsets after.
Because model state and offsets are written together, after a crash at any
point every event's effect is in the model exactly once.

`Worker` runs the loop: poll, hand each batch to the per-event path, tend to Redis and
the assignment between polls, shut down. Its other jobs have modules of their own:

- stream/_events.py: the per-event path (test-then-train, dead letters, rollbacks);
- stream/_checkpointing.py: checkpoints, offset commits, fencing;
- stream/_claims.py: claims and restores of assigned partitions;
- stream/_reporting.py: metrics and progress lines;
- stream/_shard.py and stream/_base.py: the state they share.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from livelearn.errors import ServiceUnavailable
from livelearn.learners import Sanitizer, SnapshotCodec
from livelearn.settings import Settings
from livelearn.store.checkpoints import CheckpointStore, ShardId
from livelearn.stream._budget import CheckpointBudget
from livelearn.stream._claims import Claims
from livelearn.stream._events import EventPath
from livelearn.stream._ledger import KafkaLedger
from livelearn.stream._reporting import summarize
from livelearn.stream._shard import (
    NO_CONSUMER,
    Consumer,
    Partition,
    Shard,
    ShardProgress,
    names,
    topic_specs,
)
from livelearn.stream.decode import EventDecoder
from livelearn.stream.dlq import DeadLetterSink
from livelearn.stream.fetcher import KafkaRecord, KafkaStatus
from livelearn.stream.kafka_watch import KafkaWatch
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.outage import Backoff, Outage

__all__ = [
    "Consumer",
    "Partition",
    "Shard",
    "ShardProgress",
    "Worker",
    "summarize",
    "topic_specs",
]

log = logging.getLogger("livelearn.worker")


class Worker(EventPath, Claims):
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
        ledger: KafkaLedger | None = None,
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
        # The partitions with a dead letter not known to be durable: none is checkpointed
        # past it. While the dead-letter topics do not acknowledge, they are paused and
        # the flush is retried on the outage's backoff.
        self._undelivered: set[TopicPartition] = set()
        self._dead_letters = Outage(
            "Kafka (for dead letters)",
            settings.outage,
            metrics.dependency_up.labels("dead_letters"),
        )
        # Kafka's signed record of each shard's last checkpoint (None: no such check, as in
        # a replay), and the highest version this process has seen of each shard: neither
        # lets an older checkpoint be restored (README, "Security").
        self._ledger = ledger
        self._versions_seen: dict[ShardId, int] = {}
        # The learning thread's time for checkpoints due by count or by time, and whether
        # it defers them now (logged when that starts and ends).
        self._budget = CheckpointBudget(settings.checkpoint.max_share)
        self._stretched = False
        self._stretch_logged = False
        self._stretch_logged_at = -math.inf

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

    def health(self) -> tuple[bool, dict[str, object]]:
        """Alive when the loop turned recently; for /healthz. A Kafka consumer that makes no
        progress is replaced by the loop itself, and past its bound the worker exits (69)."""
        # The same bound Kafka puts on a consumer between polls before it gives the
        # partitions away: a loop stuck longer has lost them anyway.
        age = time.monotonic() - self._last_loop
        limit = self._settings.kafka.max_poll_interval_ms / 1000
        return age < limit, {"loop_age_s": round(age, 3), "limit_s": limit, **self._kafka.details()}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when Kafka polls succeed, Redis and the dead-letter topics answer,
        partitions are assigned and claimed, every shard's snapshot was accepted and no
        shard is fenced out."""
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
        # Partitions paused until their dead letters are acknowledged.
        undelivered = sorted(f"{tp.topic}/{tp.partition}" for tp in list(self._undelivered))
        letters_ok = not self._dead_letters.active
        ok = kafka_ok and redis_ok and letters_ok and bool(assigned)
        ok = ok and not (held or fenced or claiming)
        return ok, {
            "kafka": kafka_ok,
            **self._kafka.details(),
            "redis": redis_ok,
            "dead_letters": letters_ok,
            "undelivered": undelivered if not letters_ok else [],
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
            extra={"fields": {"partitions": names([*self._partitions, *self._pending])}},
        )
        self._revoke([*self._partitions, *self._pending])
        consumer, self._consumer = self._consumer, NO_CONSUMER
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
            extra={"fields": {"partitions": names(new), "callback_s": round(elapsed, 6)}},
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
            extra={"fields": {"partitions": names(gone), "callback_s": round(elapsed, 6)}},
        )

    def _callback_done(self, callback: str, started: float) -> float:
        elapsed = time.perf_counter() - started
        self._metrics.rebalance_callback_seconds.labels(callback).observe(elapsed)
        return elapsed

    def _tend(self, now: float) -> None:
        """The worker's Redis side, between two polls: check Redis (every `_PROBE_S`, or
        at each retry during an outage), save revoked shards, claim assigned partitions
        and fenced shards; and send again the dead letters not yet acknowledged.

        Raises
        ------
        ServiceUnavailable
            When Redis, or the dead-letter topics, have not answered for longer than
            ``outage.timeout_s``.
        """
        if self._dead_letters.active:
            if self._dead_letters.due(now):
                self._deliver_dead_letters()
            self._dead_letters.check()
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

    def _shutdown(self) -> None:
        try:
            if self._dead_letters.active:  # a last try, so that the checkpoints may pass them
                self._deliver_dead_letters()
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
            if self._ledger is not None:
                self._ledger.close()
            log.info("worker stopped")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records revoked and assigned partitions; the worker loop does the rest.

    ``ProcessConsumer`` and ``ConfluentConsumer`` call them on the worker's thread, inside
    ``poll()``. kafka-python calls them on its IO thread: a revocation while the worker's
    thread waits in ``poll()``, but an assignment may finish after ``poll()`` gave up
    waiting for it, so the bookkeeping they share with the loop is guarded
    (``Worker._assigning``). With ``kafka.assignment: cooperative`` (librdkafka only) they
    carry only the partitions that move; those that stay are never revoked or claimed again.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._worker._revoke(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._worker._assign(assigned)
