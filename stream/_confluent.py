"""The worker's Kafka consumer on librdkafka, through confluent-kafka (``kafka.client: confluent``).

librdkafka fetches, decompresses and parses records on its own threads, in C, so the
worker's thread keeps little more than the learning (``make bench``: bench/bench_consume.py
and bench/bench_worker.py compare the backends). `ConfluentConsumer` gives the worker what
the kafka-python backends give it (the worker's ``Consumer`` protocol): records with the
same fields (`Record`), kafka-python's ``TopicPartition`` and ``OffsetAndMetadata``, its
``KafkaError`` from a failed offset lookup, the same rebalance order, a `KafkaStatus` and a
bounded close. How librdkafka is driven for that:

- Rebalances are eager by default (``kafka.assignment: eager``), with kafka-python's own
  assignors (``range,roundrobin``): one group can then hold workers of both backends while a
  deployment moves from one to the other, and a group only forms on a protocol every member
  offers (kafka-python offers no cooperative one). librdkafka runs the callbacks inside
  ``consume()``, on the worker's thread: the revocation of the whole assignment, then the
  new one.
- With ``kafka.assignment: cooperative`` the group uses librdkafka's ``cooperative-sticky``
  assignor: a rebalance revokes only the partitions that move to another member
  (``incremental_unassign``) and assigns only those that are new to this one
  (``incremental_assign``), so the worker's listener hears of those alone, and the
  partitions that stay keep being fetched and learned from through the rebalance.
- A partition is assigned from its first offset, and the worker's listener pauses it until
  the worker has claimed its shards and sought it to their checkpoint. Assigned without an
  offset, librdkafka would look up the group's committed offset, and the answer, coming
  after the worker's seek, would undo it (committed offsets serve lag monitoring only).
  From the first offset, a seek that never came could only repeat events, which the shards
  skip, never miss one.
- A seek of a paused partition is made when the partition is resumed, just after the
  resume: librdkafka's fetcher takes up a resumed partition at its next turn, up to a
  second later, but a seek sets it fetching at once. A partition resumed without a seek is
  sought to where it stands, for the same reason. Records fetched before a seek are never
  returned (librdkafka's version barrier).
- A poll takes the records librdkafka has fetched (``consume(max_poll_records, 0)``); when
  there are none it waits for the first (``poll(timeout)``) and takes those that came with
  it. ``consume`` with a timeout waits out the whole timeout unless the batch fills, which
  would hold every record of a slow stream for up to ``kafka.poll_timeout_ms``.
- The status comes from librdkafka's statistics (`read_stats`, every `_STATS_MS`): whether
  a broker connection is up, how long since a broker last sent anything, whether the
  member is stable in its group; ``error_cb`` reports all brokers down at once. Each report
  also goes to ``on_stats`` (the worker's metrics: `livelearn.stream.metrics.KafkaClientStats`).
- Commits are asynchronous: librdkafka finishes the commits in flight when the consumer
  closes, so the final commit of a shutdown reaches the group within the close's bound.
- ``close`` leaves the group on a helper thread, given up after `CLOSE_TIMEOUT_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    KafkaException,
)
from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp

from livelearn.errors import ConfigError, ServiceUnavailable
from livelearn.settings import KafkaSettings
from livelearn.stream.fetcher import CLOSE_TIMEOUT_S, KafkaRecord, KafkaStatus, Record

__all__ = ["ConfluentConsumer", "librdkafka_config", "read_stats"]

log = logging.getLogger("livelearn.confluent")
# librdkafka's own log lines, served on the worker's thread by each poll.
_RDKAFKA_LOG = logging.getLogger("livelearn.rdkafka")

# How often librdkafka reports its statistics, the status' source: well within the
# heartbeat and metadata periods that `KafkaWatch` expects an answer in. A report is a
# small JSON document per broker and partition, parsed on the worker's thread.
_STATS_MS = 1_000
# An offset lookup (a new shard's start) waits this long for Kafka; the worker retries it.
_LOOKUP_TIMEOUT_S = 10.0
# librdkafka's own default; raised where fetch.max.bytes needs more (it must stay 512 bytes
# below).
_RECEIVE_MAX_BYTES = 100_000_000
# librdkafka's default largest message; it refuses a fetch.max.bytes below it, so a smaller
# kafka.fetch_max_bytes lowers it too (a consumer sends no message).
_MESSAGE_MAX_BYTES = 1_000_000
# The assignors of each kafka.assignment: eager ones that kafka-python offers as well, or
# librdkafka's incremental one.
_ASSIGNORS = {"eager": "range,roundrobin", "cooperative": "cooperative-sticky"}
# Errors librdkafka reports while it reconnects by itself; the status tells the worker.
_RECONNECTING = frozenset({RdKafkaError._TRANSPORT, RdKafkaError._ALL_BROKERS_DOWN})


def librdkafka_config(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    """The librdkafka configuration of a worker's consumer (its callbacks apart).

    >>> config = librdkafka_config(KafkaSettings(group_id="g"), "kafka:9092")
    >>> config["group.id"], config["isolation.level"], config["enable.auto.offset.store"]
    ('g', 'read_committed', False)
    >>> cooperative = KafkaSettings(client="confluent", assignment="cooperative")
    >>> librdkafka_config(cooperative, "kafka:9092")["partition.assignment.strategy"]
    'cooperative-sticky'
    """
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": kafka.group_id,
        "client.id": kafka.client_id,
        # The checkpoints hold the positions; commits are explicit, for lag monitoring.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        # Labels forwarded from a separate topic come in transactions (stream/label_router.py):
        # an aborted one must never be learned.
        "isolation.level": "read_committed",
        "partition.assignment.strategy": _ASSIGNORS[kafka.assignment],
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "max.partition.fetch.bytes": kafka.max_partition_fetch_bytes,
        "fetch.max.bytes": kafka.fetch_max_bytes,
        "fetch.min.bytes": kafka.fetch_min_bytes,
        "fetch.wait.max.ms": kafka.fetch_max_wait_ms,
        "queued.max.messages.kbytes": kafka.queued_max_messages_kbytes,
        "queued.min.messages": kafka.queued_min_messages,
        "message.max.bytes": min(_MESSAGE_MAX_BYTES, kafka.fetch_max_bytes),
        "receive.message.max.bytes": max(_RECEIVE_MAX_BYTES, kafka.fetch_max_bytes + 512),
        "topic.metadata.refresh.interval.ms": kafka.metadata_max_age_ms,
        "statistics.interval.ms": _STATS_MS,
    }


def read_stats(stats: Mapping[str, Any], received_at: float) -> tuple[bool, float | None, bool]:
    """What one librdkafka statistics report (``stats_cb``'s JSON, parsed) says, received
    at ``received_at`` (monotonic seconds): whether a broker connection is up, when a broker
    last sent anything (None: never), and whether the member is stable in its group.

    >>> read_stats(
    ...     {
    ...         "brokers": {
    ...             "k:9092/1": {"state": "UP", "rxidle": 250_000},
    ...             "GroupCoordinator": {"state": "UP", "rxidle": 1_500_000},
    ...         },
    ...         "cgrp": {"state": "up", "join_state": "steady"},
    ...     },
    ...     100.0,
    ... )
    (True, 99.75, True)
    >>> read_stats({"brokers": {"k:9092/bootstrap": {"state": "CONNECT", "rxidle": -1}}}, 5.0)
    (False, None, False)
    """
    brokers = stats.get("brokers", {}).values()
    connected = any(b.get("state") == "UP" for b in brokers)
    idle_us = [b["rxidle"] for b in brokers if b.get("rxidle", -1) >= 0]
    answered_at = received_at - min(idle_us) / 1e6 if idle_us else None
    group = stats.get("cgrp", {})
    joined = group.get("state") == "up" and group.get("join_state") == "steady"
    return connected, answered_at, joined


class ConfluentConsumer:
    """The worker's ``Consumer`` on librdkafka.

    Parameters
    ----------
    config
        librdkafka's configuration (`librdkafka_config`); the callbacks are this class's.
    max_records
        The most records one ``poll`` returns (``kafka.max_poll_records``).
    factory
        Makes the librdkafka consumer from its configuration; a test can pass a fake.
    on_stats
        Called with each statistics report, parsed, on the worker's thread (the worker's
        metrics export it).
    from_committed
        Start each assigned partition at the group's committed offset, as librdkafka does
        by itself (the label router, whose offsets are committed in its transactions),
        instead of the first offset for the worker to seek.

    Raises
    ------
    ConfigError
        librdkafka refuses the configuration (it says which property and why).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        max_records: int = 2000,
        *,
        factory: Callable[[dict[str, Any]], RdKafkaConsumer] = RdKafkaConsumer,
        on_stats: Callable[[Mapping[str, Any]], None] | None = None,
        from_committed: bool = False,
    ) -> None:
        self._max_records = max_records
        # Cooperative rebalancing: the callbacks get only the partitions that change.
        strategy = config.get("partition.assignment.strategy")
        self._incremental = strategy == _ASSIGNORS["cooperative"]
        self._on_report = on_stats
        self._from_committed = from_committed
        self._listener: ConsumerRebalanceListener | None = None
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        # Seeks of paused partitions, made when they are resumed.
        self._seeks: dict[TopicPartition, int] = {}
        # Where each partition stands: after its last record returned, or where it was sought.
        self._next: dict[TopicPartition, int] = {}
        self._closed = False
        self._fatal: str | None = None
        self._warned: set[tuple[int, str]] = set()
        # From the last statistics report: connected, answered at, joined.
        self._seen: tuple[bool, float | None, bool] = (False, None, False)
        self._records_at: float | None = None
        try:
            self._consumer = factory(
                {
                    "statistics.interval.ms": _STATS_MS,  # the status' source
                    **config,
                    "error_cb": self._on_error,
                    "stats_cb": self._on_stats,
                    "on_commit": self._on_commit,
                    "logger": _RDKAFKA_LOG,
                }
            )
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"librdkafka refuses the Kafka consumer's configuration: {exc}; "
                "check the kafka.* settings it names"
            ) from None

    # -- the Consumer protocol --------------------------------------------------------

    def subscribe(
        self, topics: Sequence[str], listener: ConsumerRebalanceListener | None = None
    ) -> None:
        self._listener = listener
        try:
            self._consumer.subscribe(
                list(topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
        except KafkaException as exc:
            raise ServiceUnavailable(f"the Kafka consumer could not subscribe: {exc}") from None

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]:
        """The records librdkafka has fetched, by partition, at most ``max_records``; when
        there are none, waits up to ``timeout_ms`` for the first. Rebalance callbacks run
        in it, on this thread."""
        self._raise_fatal()
        batch = max_records or self._max_records
        consumer = self._consumer
        try:
            messages = consumer.consume(batch, 0)
            if not messages and timeout_ms > 0:
                first = consumer.poll(timeout_ms / 1000)
                if first is not None:
                    messages = [first]
                    if batch > 1:
                        messages += consumer.consume(batch - 1, 0)
        except KafkaException as exc:
            raise ServiceUnavailable(f"the Kafka consumer failed: {exc}") from None
        batches = self._batches(messages) if messages else {}
        self._raise_fatal()  # the worker lets its partitions go and makes a new consumer
        return batches

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """The next record of ``partition`` that ``poll`` returns is at ``offset``; on a
        paused partition the seek is made when it is resumed."""
        if partition not in self._assigned:  # as kafka-python
            raise KafkaError(f"seek of {partition.topic}/{partition.partition}: not assigned")
        if partition in self._paused:
            self._seeks[partition] = offset
        else:
            self._seek(partition, offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.seek(tp, OFFSET_BEGINNING)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.seek(tp, OFFSET_END)

    def pause(self, *partitions: TopicPartition) -> None:
        try:
            self._consumer.pause(_rd(partitions))
        except KafkaException as exc:  # not assigned any more: its revocation is on its way
            log.warning("pause%s not applied: %s", _names(partitions), exc)
            return
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        """Resume fetching the partitions, from their seek while paused if any, else from
        where they stand."""
        try:
            self._consumer.resume(_rd(partitions))
        except KafkaException as exc:
            log.warning("resume%s not applied: %s", _names(partitions), exc)
            return
        self._paused.difference_update(partitions)
        for tp in partitions:
            offset = self._seeks.pop(tp, self._next.get(tp))
            if offset is not None:
                self._seek(tp, offset)

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[0] for tp in partitions}

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[1] for tp in partitions}

    def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """The first offset at or after each time, None past the last record. librdkafka
        does not say that record's time: the ``timestamp`` given back is the one asked for."""
        tps = list(timestamps)
        asked = [RdTopicPartition(tp.topic, tp.partition, timestamps[tp]) for tp in tps]
        try:
            found = self._consumer.offsets_for_times(asked, timeout=_LOOKUP_TIMEOUT_S)
        except KafkaException as exc:
            raise _lookup_failed("offsets for times", tps, exc) from None
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, answer in zip(tps, found, strict=True):
            if answer.error is not None:
                raise KafkaError(f"offset for a time of {tp.topic}/{tp.partition}: {answer.error}")
            offset = answer.offset
            out[tp] = None if offset < 0 else OffsetAndTimestamp(offset, timestamps[tp], -1)
        return out

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Commit ``offsets``, without waiting: librdkafka finishes it by the time the
        consumer has closed (the worker commits last at shutdown, then closes)."""
        self._commit(offsets)

    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[dict[TopicPartition, OffsetAndMetadata], object], None],
    ) -> None:
        """Commit ``offsets``; a failure is logged (``callback`` is not called)."""
        self._commit(offsets)

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's end as of the last fetch (no request); None before one."""
        try:
            _, high = self._consumer.get_watermark_offsets(
                RdTopicPartition(partition.topic, partition.partition), cached=True
            )
        except (KafkaException, TypeError, ValueError):  # never fetched, or not assigned
            return None
        return high if high >= 0 else None

    def status(self) -> KafkaStatus:
        """The consumer's `KafkaStatus`, now, from librdkafka's last statistics."""
        connected, answered_at, joined = self._seen
        if self._records_at is not None and (answered_at is None or self._records_at > answered_at):
            answered_at = self._records_at
        return KafkaStatus(time.monotonic(), answered_at, connected, joined, len(self._assigned))

    def group_metadata(self) -> Any:
        """The member's group metadata, for a transaction's offsets (the label router)."""
        return self._consumer.consumer_group_metadata()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Leave the group (finishing the commits in flight) and close, within ``timeout``
        seconds; past it the close goes on in the background. The worker's listener is not
        called any more: the worker has let go of its partitions already."""
        if self._closed:
            return
        self._closed = True
        self._listener = None
        done = threading.Event()

        def leave() -> None:
            try:
                self._consumer.close()
            except Exception as exc:  # it is going away either way
                log.warning("closing the Kafka consumer failed: %s", exc)
            finally:
                done.set()

        threading.Thread(target=leave, name="kafka-close", daemon=True).start()
        if not done.wait(timeout):
            log.warning(
                "the Kafka consumer did not leave its group within %.0f s; it goes on closing "
                "in the background",
                timeout,
            )

    # -- librdkafka's callbacks ---------------------------------------------------------

    def _on_assign(self, consumer: RdKafkaConsumer, partitions: list[RdTopicPartition]) -> None:
        """Eager: ``partitions`` is the whole assignment. Cooperative: only the partitions
        new to this member (often none); those it keeps are not named."""
        start = (
            partitions  # at the committed offsets: librdkafka looks them up
            if self._from_committed
            else [RdTopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in partitions]
        )
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        if self._incremental:
            consumer.incremental_assign(start)
            self._assigned.update(tps)
        else:
            consumer.assign(start)
            self._assigned = set(tps)
        if self._closed:  # fetch nothing
            consumer.pause(partitions)
        elif self._listener is not None:
            self._listener.on_partitions_assigned(tps)

    def _on_revoke(self, consumer: RdKafkaConsumer, partitions: list[RdTopicPartition]) -> None:
        """Eager: the whole assignment goes. Cooperative: only ``partitions``, those moving
        to another member (or all of them, lost with the membership)."""
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        self._assigned.difference_update(tps)
        self._paused.difference_update(tps)
        for tp in tps:
            self._seeks.pop(tp, None)
            self._next.pop(tp, None)
        try:
            if self._listener is not None:
                self._listener.on_partitions_revoked(tps)
        finally:
            if self._incremental:
                consumer.incremental_unassign(partitions)
            else:
                consumer.unassign()

    def _on_error(self, error: RdKafkaError) -> None:
        if error.fatal():
            self._fatal = error.str()
            log.error("Kafka consumer: fatal error: %s", error.str())
        elif error.code() in _RECONNECTING:
            if error.code() == RdKafkaError._ALL_BROKERS_DOWN:
                self._seen = (False, *self._seen[1:])
            log.debug("Kafka consumer: %s", error.str())
        else:
            log.warning("Kafka consumer: %s", error.str())

    def _on_stats(self, report: str) -> None:
        try:
            stats = orjson.loads(report)
            self._seen = read_stats(stats, time.monotonic())
            if self._on_report is not None:
                self._on_report(stats)
        except (AttributeError, KeyError, TypeError, ValueError):  # JSONDecodeError included
            log.debug("librdkafka statistics not understood", exc_info=True)

    def _on_commit(self, error: RdKafkaError | None, partitions: list[RdTopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if error is not None or failed:
            detail = error.str() if error is not None else failed[0].error
            log.warning("offset commit failed: %s", detail)

    # -- plumbing ---------------------------------------------------------------------

    def _batches(self, messages: list[Any]) -> dict[TopicPartition, list[KafkaRecord]]:
        # Every record of a batch passes here (bench/bench_consume.py measures it): the
        # lookups are hoisted, and a record is a tuple of `Record`'s fields. Its headers are
        # an empty tuple when it has none, not a list: a tuple of atoms is dropped from the
        # garbage collector's watch, so that batches do not make it traverse a worker's
        # whole heap again and again.
        out: dict[TopicPartition, list[KafkaRecord]] = {}
        topic: str | None = None
        partition = -1  # no partition: the first record sets `append`
        unused: list[KafkaRecord] = []
        append = unused.append
        make = tuple.__new__
        for m in messages:
            if m.error() is not None:
                self._message_error(m)
                continue
            if m.partition() != partition or m.topic() != topic:
                topic, partition = m.topic(), m.partition()
                append = out.setdefault(TopicPartition(topic, partition), []).append
            kind, ts = m.timestamp()
            if kind == TIMESTAMP_NOT_AVAILABLE:
                ts = -1  # Kafka's "none", as kafka-python gives it
            fields = (topic, partition, m.offset(), ts, m.key(), m.value(), m.headers() or ())
            append(make(Record, fields))
        if out:
            self._records_at = time.monotonic()
            for tp, records in out.items():
                self._next[tp] = records[-1].offset + 1
        return out

    def _message_error(self, message: Any) -> None:
        """An error librdkafka hands over in place of a record (a subscribed topic that
        does not exist yet, say): logged once at warning level, then at debug level."""
        error: RdKafkaError = message.error()
        if error.code() == RdKafkaError._PARTITION_EOF:
            return
        if error.fatal():
            self._fatal = error.str()
            return
        seen = (error.code(), message.topic() or "")
        if seen in self._warned:
            log.debug("Kafka consumer: %s", error.str())
        else:
            self._warned.add(seen)
            log.warning("Kafka consumer: %s (the consumer goes on; logged once)", error.str())

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise ServiceUnavailable(f"the Kafka consumer hit a fatal error: {self._fatal}")

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(RdTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:  # kafka-python raises too for a partition not assigned
            raise KafkaError(f"seek of {tp.topic}/{tp.partition} to {offset}: {exc}") from None
        if offset >= 0:
            self._next[tp] = offset
        else:  # a logical offset (beginning, end): known once a record comes
            self._next.pop(tp, None)

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        try:
            found = self._consumer.get_watermark_offsets(
                RdTopicPartition(tp.topic, tp.partition), timeout=_LOOKUP_TIMEOUT_S, cached=False
            )
        except KafkaException as exc:
            raise _lookup_failed("watermark offsets", [tp], exc) from None
        if found is None:
            raise KafkaTimeoutError(
                f"watermark offsets of {tp.topic}/{tp.partition}: no answer within "
                f"{_LOOKUP_TIMEOUT_S:g} s"
            )
        return int(found[0]), int(found[1])

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        rd = [
            RdTopicPartition(tp.topic, tp.partition, o.offset, metadata=o.metadata)
            for tp, o in offsets.items()
        ]
        try:
            self._consumer.commit(offsets=rd, asynchronous=True)
        except KafkaException as exc:  # no coordinator yet, a rebalance: the next one lands
            log.warning("offset commit failed: %s", exc)


def _rd(partitions: Sequence[TopicPartition]) -> list[RdTopicPartition]:
    return [RdTopicPartition(tp.topic, tp.partition) for tp in partitions]


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in partitions]


def _lookup_failed(what: str, tps: Sequence[TopicPartition], exc: KafkaException) -> KafkaError:
    """kafka-python's error for a failed lookup, which the worker retries with a backoff."""
    error = exc.args[0] if exc.args and isinstance(exc.args[0], RdKafkaError) else None
    cls = (
        KafkaTimeoutError
        if error is not None and error.code() == RdKafkaError._TIMED_OUT
        else KafkaError
    )
    return cls(f"{what} of {', '.join(_names(tps))}: {exc}")
