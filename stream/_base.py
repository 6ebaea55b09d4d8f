"""The state the worker's parts share, and the pausing that follows from it.

`Worker` (stream/worker.py) is assembled from one class per job, each in its own module:
`Reporting` (stream/_reporting.py), `Checkpointing` (stream/_checkpointing.py), `Claims`
(stream/_claims.py) and `EventPath` (stream/_events.py), the per-event path. They share
the attributes declared here, which `Worker.__init__` sets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kafka import TopicPartition

from livelearn.errors import ServiceUnavailable
from livelearn.learners import ModelSpec, Sanitizer, SnapshotCodec
from livelearn.settings import Settings
from livelearn.store.checkpoints import CheckpointStore, ShardId
from livelearn.stream._budget import CheckpointBudget
from livelearn.stream._ledger import KafkaLedger
from livelearn.stream._shard import Consumer, Partition, Shard, ShardProgress
from livelearn.stream.decode import EventDecoder
from livelearn.stream.dlq import DeadLetterSink
from livelearn.stream.fetcher import KafkaRecord
from livelearn.stream.kafka_watch import KafkaWatch
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.outage import Backoff, Outage


class WorkerState:
    """The worker's shared state (see `Worker.__init__` for what each holds)."""

    _settings: Settings
    _consumer: Consumer
    _consumer_factory: Callable[[], Consumer] | None
    _consumer_lost: bool
    _kafka: KafkaWatch
    _store: CheckpointStore
    _dlq: DeadLetterSink
    _codec: SnapshotCodec
    _metrics: WorkerMetrics
    _on_progress: Callable[[list[ShardProgress], float], None] | None
    _on_batch: Callable[[Partition, list[KafkaRecord]], None] | None
    _specs_by_topic: dict[str, list[ModelSpec]]
    _sanitizers: dict[str, Sanitizer]
    _decoders: dict[str, EventDecoder]
    _partitions: dict[TopicPartition, Partition]
    _pending: dict[TopicPartition, float]
    _released: dict[TopicPartition, tuple[Partition, int]]
    _assignments: int
    _paused: set[TopicPartition]
    _assigning: threading.RLock
    _redis: Outage
    _next_probe: float
    _claim_retry_at: float
    _claim_backoff: Backoff
    _fence_grace_s: float
    _stop: threading.Event
    _last_loop: float
    _last_poll_ok: float
    _undelivered: set[TopicPartition]
    _dead_letters: Outage
    _ledger: KafkaLedger | None
    _versions_seen: dict[ShardId, int]
    _budget: CheckpointBudget
    _stretched: bool
    _stretch_logged: bool
    _stretch_logged_at: float

    def _hold(self, part: Partition, shard: Shard, offset: int) -> None:
        """Stop learning ``shard``; it stays held at ``offset`` (reported by /readyz)."""
        part.shards = [s for s in part.shards if s is not shard]
        part.held[shard.id] = offset
        if not part.shards:
            self._sync_pause()

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
        those with no live shard, every one while Redis does not answer, and those whose
        dead letters wait for the dead-letter topics to answer. Polling goes on, so the
        worker keeps its place in the group."""
        waiting = self._undelivered if self._dead_letters.active else set()
        with self._assigning:
            want = set(self._pending)
            for tp, part in self._partitions.items():
                if not part.shards or self._redis.active or tp in waiting:
                    want.add(tp)
            self._paused &= self._pending.keys() | self._partitions.keys()
            pause, resume = want - self._paused, self._paused - want
            if pause:
                self._consumer.pause(*sorted(pause))
                self._paused |= pause
            if resume:
                self._consumer.resume(*sorted(resume))
                self._paused -= resume
