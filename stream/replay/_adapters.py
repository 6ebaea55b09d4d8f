"""The worker's three seams for a replay: its ``Consumer``, ``CheckpointStore`` and
``DeadLetterSink``, bounded to a range and kept in memory."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp

from livelearn.errors import StaleEpochError, VersionConflict
from livelearn.store.checkpoints import Checkpoint, ShardId
from livelearn.stream.dlq import DeadLetterSink
from livelearn.stream.fetcher import KafkaRecord
from livelearn.stream.replay._range import ReplayRange


class ReplaySource:
    """The worker's ``Consumer``: assigned partitions, bounded ranges, no group, no commits."""

    def __init__(self, consumer: KafkaConsumer, span: ReplayRange, chunk: int) -> None:
        self._consumer = consumer
        self._span = span
        self._chunk = chunk
        self._done: set[TopicPartition] = {tp for tp, (s, e) in span.offsets.items() if s >= e}
        # Fetched records, handed to the worker a chunk at a time: a chunk is one point
        # of the metric series.
        self._pending: collections.deque[tuple[TopicPartition, list[KafkaRecord]]] = (
            collections.deque()
        )
        self.finished: Callable[[], None] = lambda: None

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        tps = sorted(self._span.offsets)
        self._consumer.assign(tps)
        self._consumer.resume(*tps)  # a previous part of the replay paused them when done
        listener.on_partitions_assigned(tps)
        for tp in tps:  # the range, whatever offset a restored checkpoint covers
            self._consumer.seek(tp, self._span.offsets[tp][0])
        if self._done:
            self._consumer.pause(*self._done)

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]:
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
        batches: dict[TopicPartition, list[KafkaRecord]] = self._consumer.poll(
            timeout_ms=timeout_ms
        )
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

    def resume(self, *partitions: TopicPartition) -> None:
        """Resume what the worker paused, except the partitions whose range is done."""
        undone = [tp for tp in partitions if tp not in self._done]
        if undone:
            self._consumer.resume(*undone)

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The range's starts: a replay begins there."""
        return {tp: self._span.offsets[tp][0] for tp in partitions}

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The range's ends."""
        return {tp: self._span.offsets[tp][1] for tp in partitions}

    def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        found: dict[TopicPartition, OffsetAndTimestamp | None] = self._consumer.offsets_for_times(
            timestamps
        )
        return found

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Nothing: a replay commits no offsets."""

    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[dict[TopicPartition, OffsetAndMetadata], Any], None],
    ) -> None:
        """Nothing: a replay commits no offsets."""

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._span.offsets[partition][1]

    def close(self) -> None:
        """Nothing: the consumer outlives the worker (a replay may run it twice) and is
        closed by ``run_replay``."""


class MemoryStore:
    """The worker's ``CheckpointStore`` for a replay: starting states in, final states out."""

    def __init__(self, initial: Mapping[ShardId, Checkpoint]) -> None:
        self.rows: dict[ShardId, Checkpoint] = dict(initial)
        self._epochs: dict[ShardId, int] = {}

    def claim(self, shard: ShardId) -> tuple[int, Checkpoint | None]:
        self._epochs[shard] = self._epochs.get(shard, 0) + 1
        return self._epochs[shard], self.rows.get(shard)

    def save(
        self,
        shard: ShardId,
        epoch: int,
        blob: bytes,
        next_offset: int,
        stats: dict[str, Any],
        version: int,
        kid: str = "",
        *,
        event_ms: int | None = None,
        since: int = -1,
    ) -> int:
        """Keep the shard's final state; a replay keeps no timeline (its report holds the
        series it recorded)."""
        if self._epochs.get(shard) != epoch:
            raise StaleEpochError(str(shard), epoch, self._epochs.get(shard))
        old = self.rows.get(shard)
        if old is not None and version <= old.version:
            raise VersionConflict(str(shard), version, old.version)
        self.rows[shard] = Checkpoint(
            shard, blob, next_offset, epoch, stats, time.time(), len(blob), version, kid
        )
        return version

    def load(self, shard: ShardId) -> Checkpoint | None:
        return self.rows.get(shard)

    def reclaim(self, shard: ShardId, seen: int | None) -> int | None:
        if self._epochs.get(shard) != seen:
            return None
        return self.claim(shard)[0]

    def epochs(self, shards: Sequence[ShardId]) -> list[int | None]:
        return [self._epochs.get(shard) for shard in shards]


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
        model: str | None = None,
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
            self.forward.send(
                topic, value, key, reason=reason, detail=detail, source=source, model=model
            )

    def flush(self) -> None:
        if self.forward is not None:
            self.forward.flush()
