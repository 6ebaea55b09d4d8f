"""A Kafka consumer in a child process, so fetching and parsing use a second core.

kafka-python parses records in Python, under the worker's GIL, at a cost per event
that is a large share of a linear model's whole update (``make bench``:
bench/bench_worker.py's "kafka+json" and "child saves" columns). ``ProcessConsumer``
runs the real ``KafkaConsumer`` (group membership, heartbeats, fetching, parsing) in a
child process and hands the worker batches of plain records through a pipe; the
worker's own thread keeps the learning. It implements the worker's ``Consumer`` protocol.

Ordering is what keeps exactly-once intact: the child sends a batch, a revocation or
an assignment in the order the consumer produced them, and while a rebalance callback
runs in the child it waits for the worker's answer, applying the seeks and pauses the
worker sends meanwhile. Records buffered before a revocation reach the worker first.
A seek is answered with a marker: records of that partition sent before the child made
the seek are dropped, so ``poll`` returns, as ``KafkaConsumer.poll`` does, only records
from the new position.

Both backends say what they know of Kafka (`KafkaStatus`): the child reports it every
`_STATUS_EVERY_S` between polls, so a child whose loop stops turning is seen too, and the
worker's `KafkaWatch` decides from it whether Kafka answers and whether the consumer makes
progress. Closing is bounded (`CLOSE_TIMEOUT_S`): the consumer leaves its group when Kafka
answers in time, and the child is killed past the bound, well within an orchestrator's
grace period.

Both backends join their group the same way: `load_metadata` once subscribed, so that the
first assignment is not revoked again at the next metadata refresh, and `finish_join`
before each poll, so that a join kafka-python began and then lost track of is finished.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import MemberState, OffsetAndMetadata, OffsetAndTimestamp

from livelearn.errors import ServiceUnavailable

log = logging.getLogger("livelearn.fetcher")


class KafkaRecord(Protocol):
    """A consumed Kafka record, as the worker and its ``on_batch`` hook read it.

    kafka-python's ``ConsumerRecord`` (a consumer in this process) and ``Record`` (from
    ``ProcessConsumer`` and ``ConfluentConsumer``) both have these fields, by name; their
    positions differ.
    """

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class KafkaStatus(NamedTuple):
    """What a consumer knows of Kafka and of its group, as of ``at`` (monotonic seconds).

    ``answered_at`` is when Kafka last answered it (a heartbeat, a metadata refresh or a
    fetch with records), None before the first answer; ``connected`` whether it has a
    connection to any broker; ``joined`` whether it is a stable member of its group with a
    known coordinator; ``assigned`` how many partitions the group gave it.
    """

    at: float
    answered_at: float | None
    connected: bool
    joined: bool
    assigned: int


# How often the fetch process reports its `KafkaStatus` between polls.
_STATUS_EVERY_S = 0.5
# The whole of `ProcessConsumer.close`: well under the 30 s an orchestrator waits after
# SIGTERM, and with room for the consumer to leave its group when Kafka answers.
CLOSE_TIMEOUT_S = 8.0
# A child that has not reported for this long is not expected to answer a close.
_SILENT_S = 10 * _STATUS_EVERY_S
# The part of it the child's own KafkaConsumer.close may take (commit, LeaveGroup).
_CONSUMER_CLOSE_MS = 5_000


def read_status(consumer: KafkaConsumer, records_at: float | None = None) -> KafkaStatus:
    """The `KafkaStatus` of a kafka-python 3 ``KafkaConsumer`` (``records_at``: when it last
    returned records). It reads the client's own bookkeeping, which no public call exposes:
    the last heartbeat answered, the last metadata refresh, the open connections."""
    now = time.monotonic()
    answered = [] if records_at is None else [records_at]
    connected = joined = False
    try:
        coordinator = consumer._coordinator
        manager = consumer._client._manager
        last_heartbeat = coordinator.heartbeat.last_receive
        if math.isfinite(last_heartbeat):
            answered.append(last_heartbeat)
        refreshed_ms = manager.cluster._last_successful_refresh_ms
        if refreshed_ms:
            answered.append(refreshed_ms / 1000)
        connected = any(conn.connected for conn in list(manager._conns.values()))
        joined = (
            consumer.group_metadata().state == MemberState.STABLE
            and coordinator.coordinator_id is not None
        )
        assigned = len(consumer.assignment())
    except Exception:  # a client without this bookkeeping: nothing known, nothing claimed
        log.debug("Kafka client status unavailable", exc_info=True)
        assigned = 0
    return KafkaStatus(now, max(answered) if answered else None, connected, joined, assigned)


def load_metadata(consumer: KafkaConsumer) -> None:
    """Fetch the cluster's metadata now: call it once the consumer is subscribed, before
    its first poll joins the group.

    A group's leader assigns from the cluster's metadata, and kafka-python 3 keeps a
    snapshot of the subscribed topics' partitions, taken at each metadata response that
    comes while subscribed; after a join the leader rejoins whenever the snapshot differs
    from the one it assigned with. Metadata loaded before ``subscribe()`` (so that a topic
    made just before start-up is assigned) leaves that snapshot empty until the next
    refresh, which comes after the join: the leader then sees its topics' partitions
    "appear", revokes what it was just given and joins again. Fetched while subscribed,
    the metadata is in the snapshot the first assignment is made with.
    """
    try:
        consumer.topics()  # a metadata request every time, not the cache
    except KafkaError as exc:  # Kafka restarting: the subscription's own refresh follows
        log.debug("metadata not loaded before joining: %s", exc)


def finish_join(consumer: KafkaConsumer) -> bool:
    """Make the next ``poll()`` finish a group join that kafka-python 3 began and then lost
    track of; True when there was one.

    A leader rejoins when the metadata it assigned with has changed (partitions appeared),
    a member when its subscription has. kafka-python 3 keeps neither reason in its rejoin
    flag: each poll compares again (``need_rejoin()``), and the join itself makes them
    equal (the leader's assignment takes in the new metadata, the JoinGroup request the
    subscription). When the poll that began such a join returns before the join ends (a
    rebalance callback that outlasts the poll's timeout: in the fetch process it waits for
    the worker's answer), the next poll finds nothing to rejoin for and never collects the
    join's result. The member stays ``REBALANCING`` with its heartbeats off, the broker
    drops it after ``session_timeout_ms``, and it never joins again: no partition, no
    record, until a watchdog replaces the consumer. Java's consumer counts a join in
    flight as a reason to go on joining (``rejoinNeededOrPending``); this asks for the
    rejoin again, and the next poll finishes the join or makes a new one.
    """
    try:
        coordinator = consumer._coordinator
        if coordinator.state is not MemberState.REBALANCING or coordinator.need_rejoin():
            return False
        coordinator.request_rejoin()
    except AttributeError:  # a client without this bookkeeping: nothing to finish
        return False
    log.debug("a group join was left unfinished by kafka-python: joining again")
    return True


class Record(NamedTuple):
    """The parts of a Kafka record the worker reads, as ``ProcessConsumer`` and
    ``ConfluentConsumer`` hand them over."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


# The messages on the pipe, a kind first.
_Pairs: TypeAlias = list[tuple[str, int]]  # (topic, partition) of each partition
# A record less its topic and partition: offset, timestamp, key, value, headers.
_Row: TypeAlias = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]
# One partition's records: topic, partition, rows, high watermark.
_Batch: TypeAlias = tuple[str, int, list[_Row], int | None]
_ToWorker: TypeAlias = (
    tuple[Literal["ready"]]
    | tuple[Literal["records"], list[_Batch]]
    | tuple[Literal["revoke", "assign"], _Pairs]
    | tuple[Literal["error"], str]
    | tuple[Literal["sought"], str, int]  # the seek of that partition is made
    # connected, seconds since Kafka answered (None: never), joined, partitions assigned,
    # and the high watermark of each assigned partition
    | tuple[Literal["status"], bool, float | None, bool, int, list[tuple[str, int, int]]]
    | tuple[Literal["closed"]]
)
_ToChild: TypeAlias = (
    tuple[Literal["config"], dict[str, Any], int]
    | tuple[Literal["subscribe"], list[str]]
    | tuple[Literal["seek"], str, int, int]
    | tuple[Literal["seek_to_beginning", "seek_to_end", "pause", "resume"], _Pairs]
    | tuple[Literal["commit"], list[tuple[str, int, int, str]]]
    | tuple[Literal["done"]]
    | tuple[Literal["close"]]
)


class ProcessConsumer:
    """The worker's ``Consumer``, backed by a ``KafkaConsumer`` in a child process."""

    def __init__(
        self, config: dict[str, Any], poll_timeout_ms: int = 200, start_timeout: float = 60.0
    ) -> None:
        # A plain subprocess, not multiprocessing: spawning re-imports the parent's main
        # module, which a console script or a test runner does not expect.
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._send(("config", config, poll_timeout_ms))
        self._listener: Any = None
        self._highwater: dict[TopicPartition, int | None] = {}
        self._closed = False
        # Partitions sought and not yet confirmed: their records are from before the seek.
        self._unsought: dict[TopicPartition, int] = {}
        self._config = config
        self._lookup: KafkaConsumer | None = None  # offset lookups, in this process
        self._status: KafkaStatus | None = None  # none reported yet
        self._in_callback = False  # a rebalance callback the child waits on
        answer = self._recv(start_timeout)
        if answer is None:  # no answer at all: the child hangs or died without a word
            self._proc.kill()
            self._proc.wait(5)
            self._conn.close()
            raise ServiceUnavailable(
                f"the Kafka fetch process did not answer within {start_timeout:.0f} s"
            )
        kind, *rest = answer
        if kind != "ready":
            self._proc.wait(5)
            raise ServiceUnavailable(f"the Kafka fetch process failed to start: {rest}")

    # -- the Consumer protocol --------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        self._listener = listener
        self._send(("subscribe", list(topics)))

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            message = self._recv(max(0.0, deadline - time.monotonic()))
            if message is None:
                return {}
            if message[0] == "records":
                return self._batches(message[1])
            if message[0] in ("revoke", "assign"):
                tps = [TopicPartition(t, p) for t, p in message[1]]
                self._in_callback = True
                try:
                    if message[0] == "revoke":
                        self._listener.on_partitions_revoked(tps)
                    else:
                        self._listener.on_partitions_assigned(tps)
                finally:
                    # Whatever the listener did, the child waits for this answer: without
                    # it the child's consumer stays blocked in the rebalance.
                    self._in_callback = False
                    self._send(("done",))
            elif message[0] == "status":
                _, connected, answered_age, joined, assigned, ends = message
                now = time.monotonic()
                answered_at = None if answered_age is None else now - answered_age
                self._status = KafkaStatus(now, answered_at, connected, joined, assigned)
                for topic, partition, end in ends:  # fetched even when no record came
                    self._highwater[TopicPartition(topic, partition)] = end
            elif message[0] == "sought":
                tp = TopicPartition(message[1], message[2])
                left = self._unsought.pop(tp, 1) - 1
                if left > 0:
                    self._unsought[tp] = left
            elif message[0] == "error":
                raise ServiceUnavailable(f"the Kafka fetch process failed: {message[1]}")

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._sought(partition)
        self._send(("seek", partition.topic, partition.partition, offset))

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._sought(*partitions)
        self._send(("seek_to_beginning", [(tp.topic, tp.partition) for tp in partitions]))

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._sought(*partitions)
        self._send(("seek_to_end", [(tp.topic, tp.partition) for tp in partitions]))

    def _sought(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._unsought[tp] = self._unsought.get(tp, 0) + 1

    def pause(self, *partitions: TopicPartition) -> None:
        self._send(("pause", [(tp.topic, tp.partition) for tp in partitions]))

    def resume(self, *partitions: TopicPartition) -> None:
        self._send(("resume", [(tp.topic, tp.partition) for tp in partitions]))

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        result: dict[TopicPartition, int] = self._offsets().beginning_offsets(list(partitions))
        return result

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        result: dict[TopicPartition, int] = self._offsets().end_offsets(list(partitions))
        return result

    def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        result: dict[TopicPartition, OffsetAndTimestamp | None] = self._offsets().offsets_for_times(
            timestamps
        )
        return result

    def _offsets(self) -> KafkaConsumer:
        """A consumer in this process, in no group, for offset lookups (new shards' starts):
        they need an answer, which the pipe to the child does not carry."""
        if self._lookup is None:
            options = {
                k: v
                for k, v in self._config.items()
                if k in ("bootstrap_servers", "request_timeout_ms", "api_version")
                or k.startswith(("security_", "sasl_", "ssl_"))
            }
            client_id = f"{self._config.get('client_id', 'livelearn-worker')}-offsets"
            self._lookup = KafkaConsumer(**options, client_id=client_id, enable_auto_commit=False)
        return self._lookup

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._send(
            (
                "commit",
                [(tp.topic, tp.partition, o.offset, o.metadata) for tp, o in offsets.items()],
            )
        )

    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[dict[TopicPartition, OffsetAndMetadata], object], None],
    ) -> None:
        self.commit(offsets)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._highwater.get(partition)

    def status(self) -> KafkaStatus | None:
        """What the child last reported of Kafka (its ``at`` is when); None before that."""
        return self._status

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the consumer in the child, leaving the group if Kafka answers in time, and
        wait for the child to exit; past ``timeout`` seconds in all it is killed."""
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        if self._status is not None and now - self._status.at > _SILENT_S:
            timeout = min(timeout, 2.0)  # the child stopped reporting: it will not answer
        deadline = now + timeout
        try:
            if self._in_callback:  # the listener raised: let the child's rebalance finish
                self._send(("done",))
            self._send(("close",))
            while (left := deadline - time.monotonic() - 1.0) > 0:
                message = self._recv(min(left, 0.5))
                if message is not None and message[0] in ("revoke", "assign"):
                    self._send(("done",))  # the worker has checkpointed and let go already
                elif message is not None and message[0] in ("closed", "error"):
                    break
        except ServiceUnavailable:
            pass
        try:
            self._proc.wait(max(0.1, deadline - time.monotonic() - 0.5))
        except subprocess.TimeoutExpired:
            log.warning("the Kafka fetch process did not close within %.0f s: killed", timeout)
            self._proc.kill()
            self._proc.wait(5)
        self._conn.close()
        if self._lookup is not None:
            self._lookup.close(timeout_ms=1_000)

    # -- plumbing ---------------------------------------------------------------------

    def _batches(self, payload: list[_Batch]) -> dict[TopicPartition, list[KafkaRecord]]:
        out: dict[TopicPartition, list[KafkaRecord]] = {}
        make = Record._make
        for topic, partition, rows, highwater in payload:
            tp = TopicPartition(topic, partition)
            self._highwater[tp] = highwater
            if tp in self._unsought:
                continue  # fetched before the child made the worker's seek
            out[tp] = [make((topic, partition, *row)) for row in rows]
        return out

    def _send(self, message: _ToChild) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError):
            raise ServiceUnavailable("the Kafka fetch process has exited") from None

    def _recv(self, timeout: float) -> _ToWorker | None:
        try:
            if not self._conn.poll(timeout):
                return None
            message: _ToWorker = self._conn.recv()
            return message
        except (EOFError, OSError):
            code = self._proc.poll()
            raise ServiceUnavailable(f"the Kafka fetch process has exited (code {code})") from None


class LocalConsumer(KafkaConsumer):  # type: ignore[misc]
    """kafka-python's ``KafkaConsumer`` in the worker's own process (``kafka.fetch_in_child:
    false``), with its `KafkaStatus` and a bounded commit and close, as `ProcessConsumer`."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._records_at: float | None = None

    def subscribe(
        self,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        """Subscribe, then load the metadata the first assignment is made with
        (`load_metadata`)."""
        super().subscribe(topics, pattern, listener)
        load_metadata(self)

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> dict[TopicPartition, list[Any]]:
        finish_join(self)
        records: dict[TopicPartition, list[Any]] = super().poll(
            timeout_ms, max_records, update_offsets
        )
        if records:
            self._records_at = time.monotonic()
        return records

    def status(self) -> KafkaStatus:
        """The consumer's `KafkaStatus`, now."""
        return read_status(self, self._records_at)

    def commit(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata] | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """A synchronous commit, given up after a few seconds when Kafka does not answer."""
        super().commit(offsets, timeout_ms=_CONSUMER_CLOSE_MS if timeout_ms is None else timeout_ms)

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        """Leave the group and close, within `CLOSE_TIMEOUT_S` when Kafka does not answer."""
        super().close(autocommit, _CONSUMER_CLOSE_MS if timeout_ms is None else timeout_ms)


# -- the child process ------------------------------------------------------------------


class _Gone(Exception):
    """The worker process closed the pipe."""


_CHILD = "import sys; from livelearn.stream.fetcher import serve; serve(int(sys.argv[1]))"


def serve(fd: int) -> None:
    """The child process: run a ``KafkaConsumer`` for the worker at the other end of ``fd``."""
    # Ctrl-C reaches the whole process group: the worker decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        _, config, poll_ms = conn.recv()
    except (EOFError, OSError):
        return
    try:
        consumer = KafkaConsumer(**config)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    child = _Child(conn, consumer)
    conn.send(("ready",))
    try:
        child.run(poll_ms)
    except _Gone:
        child.gone = True
        consumer.close(timeout_ms=_CONSUMER_CLOSE_MS)
    except Exception as exc:  # report and stop; the worker rides it out as an outage
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            child.gone = True  # nobody answers a rebalance callback any more
            consumer.close(timeout_ms=_CONSUMER_CLOSE_MS)


class _Child(ConsumerRebalanceListener):  # type: ignore[misc]
    """The child's loop and its rebalance listener (on kafka-python's IO thread)."""

    def __init__(self, conn: Connection, consumer: KafkaConsumer) -> None:
        self.conn = conn
        self.consumer = consumer
        self.subscribed = False
        self.closing = False
        self.gone = False
        self.records_at: float | None = None
        self.next_status = 0.0
        # kafka-python runs the rebalance callbacks on its IO thread, at times while this
        # loop runs (an assignment finishing after ``poll()`` gave up waiting for it): the
        # pipe is used by one of them at a time, and a callback holds it until the worker's
        # "done", so that this loop never reads an answer meant for the callback.
        self.pipe = threading.Lock()

    def run(self, poll_ms: int) -> None:
        while not self.closing:
            with self.pipe:
                while self.conn.poll(0):
                    self.handle(self.recv())
            if self.closing:
                break
            if time.monotonic() >= self.next_status:
                with self.pipe:
                    self.report()
            if not self.subscribed:
                with self.pipe:
                    if self.conn.poll(0.1):
                        self.handle(self.recv())
                continue
            finish_join(self.consumer)
            try:
                batches = self.consumer.poll(timeout_ms=poll_ms)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                # Kafka is restarting or unreachable: the client reconnects by itself, and
                # the status tells the worker, which bounds the outage.
                log.debug("poll failed, retrying: %s", exc)
                time.sleep(poll_ms / 1000)
                continue
            if batches:
                self.records_at = time.monotonic()
                payload = [
                    (
                        tp.topic,
                        tp.partition,
                        [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in records],
                        self.consumer.highwater(tp),
                    )
                    for tp, records in batches.items()
                ]
                with self.pipe:
                    self.conn.send(("records", payload))
        self.consumer.close(timeout_ms=_CONSUMER_CLOSE_MS)
        with self.pipe:
            self.conn.send(("closed",))

    def report(self) -> None:
        """Send the worker this consumer's `KafkaStatus`, with ages instead of times."""
        status = read_status(self.consumer, self.records_at)
        age = None if status.answered_at is None else status.at - status.answered_at
        ends = []
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is not None:
                ends.append((tp.topic, tp.partition, end))
        self.conn.send(("status", status.connected, age, status.joined, status.assigned, ends))
        self.next_status = status.at + _STATUS_EVERY_S

    def recv(self) -> _ToChild:
        try:
            message: _ToChild = self.conn.recv()
            return message
        except (EOFError, OSError):
            raise _Gone() from None

    def handle(self, message: _ToChild) -> None:
        c = self.consumer
        if message[0] == "subscribe":
            c.subscribe(message[1], listener=self)
            load_metadata(c)  # before the first poll joins: a just-created topic is assigned
            self.subscribed = True
        elif message[0] == "seek":
            self._apply(c.seek, [(message[1], message[2])], message[3])
        elif message[0] == "seek_to_beginning":
            self._apply(c.seek_to_beginning, message[1])
        elif message[0] == "seek_to_end":
            self._apply(c.seek_to_end, message[1])
        elif message[0] == "pause":
            self._apply(c.pause, message[1])
        elif message[0] == "resume":
            self._apply(c.resume, message[1])
        elif message[0] == "commit":
            offsets = {
                TopicPartition(t, p): OffsetAndMetadata(o, m, -1) for t, p, o, m in message[1]
            }
            try:
                # Inside a rebalance callback (kafka-python's IO thread) only async commits
                # are allowed; elsewhere too, as commits are for lag monitoring only.
                c.commit_async(offsets)
            except Exception as exc:
                log.warning("offset commit failed: %s", exc)
        elif message[0] == "close":
            self.closing = True

    def _apply(self, method: Callable[..., Any], pairs: _Pairs, *args: Any) -> None:
        """Call a seek, pause or resume; a seek is confirmed to the worker, made or not."""
        tps = [TopicPartition(t, p) for t, p in pairs]
        try:
            if args:  # seek(tp, offset): one partition
                method(tps[0], *args)
            else:
                method(*tps)
        except Exception as exc:  # not assigned any more: its revocation is on its way
            log.warning("%s%s not applied: %s", method.__name__, pairs, exc)
        if method.__name__.startswith("seek"):
            for tp in tps:
                self.conn.send(("sought", tp.topic, tp.partition))

    def _callback(self, kind: Literal["revoke", "assign"], tps: Iterable[TopicPartition]) -> None:
        if self.gone or (self.closing and kind == "assign"):
            return
        try:
            with self.pipe:
                self.conn.send((kind, [(tp.topic, tp.partition) for tp in tps]))
                while True:
                    message = self.recv()
                    if message[0] == "done":
                        return
                    self.handle(message)
        except (_Gone, BrokenPipeError, OSError):
            self.gone = True
            self.closing = True

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._callback("revoke", revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._callback("assign", assigned)
