"""What the worker holds: its shards, its assigned partitions and the consumer it reads.

A shard is one model's state for one topic-partition: its learner, where it resumes, and
what it learned since its last checkpoint (docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaConnectionError
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp

from livelearn.errors import ServiceUnavailable
from livelearn.learners import Learner, ModelSpec, Sanitizer, Task, spec_fingerprint
from livelearn.store.checkpoints import ShardId
from livelearn.stream.decode import EventDecoder
from livelearn.stream.fetcher import KafkaRecord

# What wrote a checkpoint: "start" pins a new shard's start position, "retry" is one that
# waited for Redis to answer again, "reclaim" writes a shard's state again after Redis
# lost its claim.
Trigger = Literal["events", "time", "revoke", "shutdown", "error", "start", "retry", "reclaim"]


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
    # The signed snapshot of the last checkpoint (or of the fresh learner) and the records
    # learned since, as (offset, value, Kafka timestamp, the time the event was judged
    # against): after an error mid-event the learner is rebuilt from them, exactly as if it
    # had never seen that event (`Worker._roll_back`).
    base_blob: bytes = b""
    since_base: list[tuple[int, bytes | None, int, int]] = field(default_factory=list)
    # The next offset of the last checkpoint written (or restored): where the shard is held
    # when its learner cannot be rebuilt after an error, or its checkpoint is refused.
    checkpointed_offset: int = -1
    # The event time of the last event the last checkpoint written covers (its timeline
    # entry's), kept for a checkpoint with no event since (on shutdown, say).
    last_event_ms: int | None = None
    # The checkpoint the state builds on, as (its writer's epoch, its version); None when
    # there is none. A shard assigned back to this worker keeps its learner when the store
    # still holds exactly that checkpoint and nothing is pending (`Worker._restore`).
    based_on: tuple[int, int] | None = None
    # The highest checkpoint version known for the shard (restored, written, or in Kafka's
    # committed record): the next checkpoint is signed as this plus one.
    version: int = 0
    # Whether a replica acknowledged the last checkpoint (`redis.wait_replicas`): while it
    # has not, the partition's Kafka offsets are not committed past it.
    replicated: bool = True
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
    # The last label-free alarm logged (its sequence number), and what the last alarm of
    # each signal named (the label of its series in livelearn_label_free_alarm_timestamp).
    reported_alarm_seq: int = field(init=False)
    alarm_features: dict[str, str] = field(init=False, default_factory=dict)
    task: Task = field(init=False)
    every_events: int = field(init=False)
    fingerprint: str = field(init=False)  # of the spec, signed into each checkpoint

    def __post_init__(self) -> None:
        self.use(self.learner)
        self.fingerprint = spec_fingerprint(self.spec)
        self.sanitize = self.sanitizer.apply if self.spec.sanitize else None
        self.label_field = self.spec.label
        self.delayed = self.spec.delayed_labels is not None
        self.holdout = self.spec.holdout
        # A restored learner's counts were reported by the worker that learned them.
        self.reported_labels = dict(getattr(self.learner, "label_counts", {}))
        self.reported_alarms = self.learner.alarms
        self.reported_alarm_seq = self.learner.alarm_seq
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
    # Each model's (version, next offset) at its last checkpoint known here, from Kafka's
    # committed record and this worker's checkpoints: committed with the offsets, signed
    # (stream/_ledger.py), so that a rolled-back checkpoint is refused.
    floors: dict[str, tuple[int, int]] = field(default_factory=dict)

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


class NoConsumer:
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


NO_CONSUMER: Consumer = NoConsumer()


def topic_specs(models: Iterable[ModelSpec]) -> dict[str, list[ModelSpec]]:
    """Models by the topics they read."""
    out: dict[str, list[ModelSpec]] = {}
    for spec in models:
        for topic in spec.topics:
            out.setdefault(topic, []).append(spec)
    return out


def names(tps: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in tps]
