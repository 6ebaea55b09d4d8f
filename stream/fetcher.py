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
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from livelearn.errors import ServiceUnavailable

log = logging.getLogger("livelearn.fetcher")


class KafkaRecord(Protocol):
    """A consumed Kafka record, as the worker and its ``on_batch`` hook read it.

    kafka-python's ``ConsumerRecord`` (a consumer in this process) and ``Record`` (from
    ``ProcessConsumer``) both have these fields, by name; their positions differ.
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


class Record(NamedTuple):
    """The parts of a Kafka record the worker reads, as ``ProcessConsumer`` hands them over."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


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
    | tuple[Literal["closed"]]
)
_ToChild: TypeAlias = (
    tuple[Literal["config"], dict[str, Any], int]
    | tuple[Literal["subscribe"], list[str]]
    | tuple[Literal["seek"], str, int, int]
    | tuple[Literal["seek_to_beginning", "seek_to_end", "pause"], _Pairs]
    | tuple[Literal["commit"], list[tuple[str, int, int]]]
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
                if message[0] == "revoke":
                    self._listener.on_partitions_revoked(tps)
                else:
                    self._listener.on_partitions_assigned(tps)
                self._send(("done",))
            elif message[0] == "error":
                raise ServiceUnavailable(f"the Kafka fetch process failed: {message[1]}")

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._send(("seek", partition.topic, partition.partition, offset))

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._send(("seek_to_beginning", [(tp.topic, tp.partition) for tp in partitions]))

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._send(("seek_to_end", [(tp.topic, tp.partition) for tp in partitions]))

    def pause(self, *partitions: TopicPartition) -> None:
        self._send(("pause", [(tp.topic, tp.partition) for tp in partitions]))

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._send(("commit", [(tp.topic, tp.partition, o.offset) for tp, o in offsets.items()]))

    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[dict[TopicPartition, OffsetAndMetadata], object], None],
    ) -> None:
        self.commit(offsets)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._highwater.get(partition)

    def close(self) -> None:
        """Close the consumer in the child (leaving the group) and wait for it to exit."""
        if self._closed:
            return
        self._closed = True
        try:
            self._send(("close",))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                message = self._recv(0.5)
                if message is not None and message[0] in ("revoke", "assign"):
                    self._send(("done",))  # the worker has checkpointed and let go already
                elif message is not None and message[0] == "closed":
                    break
        except ServiceUnavailable:
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._conn.close()

    # -- plumbing ---------------------------------------------------------------------

    def _batches(self, payload: list[_Batch]) -> dict[TopicPartition, list[KafkaRecord]]:
        out: dict[TopicPartition, list[KafkaRecord]] = {}
        make = Record._make
        for topic, partition, rows, highwater in payload:
            tp = TopicPartition(topic, partition)
            self._highwater[tp] = highwater
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


# -- the child process ------------------------------------------------------------------


class _Gone(Exception):
    """The worker process closed the pipe."""


_CHILD = "import sys; from stream.fetcher import serve; serve(int(sys.argv[1]))"


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
        consumer.close()
    except Exception as exc:  # report and stop; the worker raises and exits non-zero
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            consumer.close()


class _Child(ConsumerRebalanceListener):  # type: ignore[misc]
    """The child's loop and its rebalance listener (on kafka-python's IO thread)."""

    def __init__(self, conn: Connection, consumer: KafkaConsumer) -> None:
        self.conn = conn
        self.consumer = consumer
        self.subscribed = False
        self.closing = False
        self.gone = False

    def run(self, poll_ms: int) -> None:
        while not self.closing:
            while self.conn.poll(0):
                self.handle(self.recv())
            if self.closing:
                break
            if not self.subscribed:
                if self.conn.poll(0.1):
                    self.handle(self.recv())
                continue
            batches = self.consumer.poll(timeout_ms=poll_ms)
            if batches:
                self.conn.send(
                    (
                        "records",
                        [
                            (
                                tp.topic,
                                tp.partition,
                                [
                                    (r.offset, r.timestamp, r.key, r.value, r.headers)
                                    for r in records
                                ],
                                self.consumer.highwater(tp),
                            )
                            for tp, records in batches.items()
                        ],
                    )
                )
        self.consumer.close()
        self.conn.send(("closed",))

    def recv(self) -> _ToChild:
        try:
            message: _ToChild = self.conn.recv()
            return message
        except (EOFError, OSError):
            raise _Gone() from None

    def handle(self, message: _ToChild) -> None:
        c = self.consumer
        if message[0] == "subscribe":
            for topic in message[1]:  # metadata first: a just-created topic gets assigned
                c.partitions_for_topic(topic)
            c.subscribe(message[1], listener=self)
            self.subscribed = True
        elif message[0] == "seek":
            c.seek(TopicPartition(message[1], message[2]), message[3])
        elif message[0] == "seek_to_beginning":
            c.seek_to_beginning(*(TopicPartition(t, p) for t, p in message[1]))
        elif message[0] == "seek_to_end":
            c.seek_to_end(*(TopicPartition(t, p) for t, p in message[1]))
        elif message[0] == "pause":
            c.pause(*(TopicPartition(t, p) for t, p in message[1]))
        elif message[0] == "commit":
            offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for t, p, o in message[1]}
            try:
                # Inside a rebalance callback (kafka-python's IO thread) only async commits
                # are allowed; elsewhere too, as commits are for lag monitoring only.
                c.commit_async(offsets)
            except Exception as exc:
                log.warning("offset commit failed: %s", exc)
        elif message[0] == "close":
            self.closing = True

    def _callback(self, kind: Literal["revoke", "assign"], tps: Iterable[TopicPartition]) -> None:
        if self.gone or (self.closing and kind == "assign"):
            return
        try:
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
