"""The dead-letter producer: malformed events, with why and where they came from.

Each dead letter goes to ``<source topic><suffix>`` (``payments.dlq``) with the source
record's key and value and these headers:

``livelearn.reason``, ``livelearn.detail``
    why the event was refused (a short code, and the message).
``livelearn.source.topic``, ``livelearn.source.partition``, ``livelearn.source.offset``
    where the event is in its source topic.
``livelearn.dedup_key``
    ``<source topic>/<partition>/<offset>/<reason>``. The same source offset can be
    dead-lettered more than once: after a crash between a dead letter and the checkpoint
    that passes it, the worker reads the event again; and a dead letter whose
    acknowledgement was lost is sent again. A consumer of the dead-letter topic drops
    repeats by this key.
``livelearn.value_cut``, ``livelearn.value_bytes``, ``livelearn.value_sha256``
    only on a dead letter too large for the producer's ``max_request_size`` (or refused
    as too large by the broker): its value is replaced by nothing, and these say how long
    the original was and its SHA-256, to find it in the source topic at its offset. The
    ``livelearn.key_*`` headers say the same of a key that was too large as well.

Delivery is confirmed: `KafkaDeadLetterSink.flush` checks every dead letter's
acknowledgement, retries the failed ones (`RetryPolicy`), and raises
`livelearn.errors.DeadLetterError` naming the source of each one it could not deliver.
The producer is the worker's Kafka client's (``kafka.client``): kafka-python's, or
librdkafka's through stream/_confluent_clients.py, with ``acks=all`` and idempotence on
both.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from livelearn.errors import ConfigError, DeadLetterError, InvalidEvent
from livelearn.settings import Settings, server_list
from livelearn.stream._confluent_clients import confluent_producer
from livelearn.stream.fetcher import KafkaRecord

log = logging.getLogger("livelearn.dlq")

# kafka-python's own default, which the broker's default message.max.bytes also allows.
DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024
# Room for what a record costs beyond its key, value and headers (the record batch's
# header, the length varints): above kafka-python's upper estimate, so that a dead letter
# this module lets through is never refused by the producer's size check.
_RECORD_OVERHEAD_BYTES = 1024
# The detail header is for a person; the full message is in the worker's log.
_DETAIL_CHARS = 1000
# Room for a dead letter's own headers once its value and key are cut.
_MIN_REQUEST_SIZE = 64 * 1024
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


class DeadLetterSink(Protocol):
    """Where the worker sends events it cannot learn from.

    ``send`` queues; ``flush`` makes every queued dead letter durable or says which were
    not. The worker flushes before a checkpoint moves past an event it dead-lettered.
    """

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
        """Queue one dead letter; ``source`` is (topic, partition, offset), ``model`` the
        model that refused the event (None when no model could read it). Never raises for
        a failed or too large dead letter: `flush` reports it."""
        ...

    def flush(self) -> None:
        """Block until every queued dead letter is acknowledged, retrying failed ones.

        Raises
        ------
        DeadLetterError
            Some dead letters were not acknowledged after every retry; its ``sources`` are
            their (topic, partition, offset), which no checkpoint may pass until a later
            flush delivers them. The dead letters it names stay queued, and the next flush
            sends them again; the others were delivered.

        """
        ...


def dlq_topic(topic: str, suffix: str) -> str:
    """The dead-letter topic of ``topic``.

    >>> dlq_topic("payments", ".dlq")
    'payments.dlq'
    """
    return topic + suffix


def dedup_key(source: tuple[str, int, int], reason: str, model: str | None = None) -> str:
    """The ``livelearn.dedup_key`` header: the same for every repeat of a dead letter, and
    distinct for each model that refused the same event.

    >>> dedup_key(("payments", 3, 1042), "not_json")
    'payments/3/1042/not_json'
    >>> dedup_key(("payments", 3, 1042), "bad_label", "fraud")
    'payments/3/1042/bad_label/fraud'
    """
    topic, partition, offset = source
    key = f"{topic}/{partition}/{offset}/{reason}"
    return key if model is None else f"{key}/{model}"


def as_invalid(exc: Exception, reason: str) -> InvalidEvent:
    """``exc`` as the dead letter's reason and detail: its own for an `InvalidEvent`, else
    ``reason`` with the exception's type and message."""
    if isinstance(exc, InvalidEvent):
        return exc
    return InvalidEvent(reason, f"{type(exc).__name__}: {exc}")


def dead_letter_record(
    sink: DeadLetterSink, rec: KafkaRecord, exc: InvalidEvent, model: str | None = None
) -> None:
    """Queue the consumed ``rec`` as a dead letter with ``exc``'s reason, and log it (its
    coordinates and reason, never its value); ``model`` is the model that refused it."""
    sink.send(
        rec.topic,
        rec.value,
        rec.key,
        reason=exc.reason,
        detail=exc.detail,
        source=(rec.topic, rec.partition, rec.offset),
        model=model,
    )
    log.warning(
        "event sent to the dead-letter topic",
        extra={
            "fields": {
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "reason": exc.reason,
                "detail": exc.detail,
                **({"model": model} if model is not None else {}),
            }
        },
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How many times a dead letter is sent, and how long to wait between the attempts
    (as redis-py's ``Retry`` with an exponential backoff): ``backoff_s`` after the first
    failure, doubling, at most ``max_backoff_s``.

    >>> [RetryPolicy().backoff(n) for n in range(1, 6)]
    [0.25, 0.5, 1.0, 2.0, 4.0]
    """

    # Five attempts over about 8 seconds of backoff ride out a partition leader's election
    # or a broker's restart, and stay well within the consumer's max_poll_interval_ms.
    attempts: int = 5
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts={self.attempts}: send at least once (>= 1)")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError(
                f"RetryPolicy backoff_s={self.backoff_s}, max_backoff_s={self.max_backoff_s}: "
                "a backoff cannot be negative"
            )

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 1)))


class _Future(Protocol):
    is_done: bool

    def get(self, timeout: float | None = None) -> Any: ...


class Producer(Protocol):
    """The part of kafka-python's ``KafkaProducer`` livelearn uses (the dead-letter sink,
    and the label router with its transactions): kafka-python's own, or
    `livelearn.stream._confluent_clients.ConfluentProducer` on librdkafka."""

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> _Future: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


@dataclass
class _Letter:
    """One queued dead letter, with its last send's future or why it failed.

    The cause is kept as text: an exception would keep its traceback's frames, and the
    sockets in them, alive.
    """

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    source: tuple[str, int, int]
    dedup: str
    future: _Future | None = None
    cause: str | None = None

    def size(self) -> int:
        """An upper bound of the record's size as the producer counts it."""
        fields = len(self.value) + len(self.key or b"")
        headers = sum(len(k.encode()) + len(v) for k, v in self.headers)
        return fields + headers + _RECORD_OVERHEAD_BYTES

    def cut(self) -> None:
        """Replace the value, or if it is cut already the key, by nothing, saying so in
        headers."""
        if self.value:
            self.headers += _cut_headers("value", self.value)
            self.value = b""
        elif self.key:
            self.headers += _cut_headers("key", self.key)
            self.key = None


def _cut_headers(part: str, data: bytes) -> list[tuple[str, bytes]]:
    return [
        (f"livelearn.{part}_cut", b"true"),
        (f"livelearn.{part}_bytes", str(len(data)).encode()),
        (f"livelearn.{part}_sha256", hashlib.sha256(data).hexdigest().encode()),
    ]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def dead_letter_sink(settings: Settings) -> KafkaDeadLetterSink:
    """The sink the ``kafka`` and ``dead_letters`` settings describe, on the Kafka client
    ``kafka.client`` names."""
    k, d = settings.kafka, settings.dead_letters
    return KafkaDeadLetterSink(
        settings.require_services()[0],
        k.dlq_suffix,
        k.client_id,
        max_request_size=d.max_request_size,
        retry=RetryPolicy(d.attempts, d.backoff_s, d.max_backoff_s),
        timeout_s=d.timeout_s,
        producer_factory=confluent_producer if k.client == "confluent" else KafkaProducer,
    )


class KafkaDeadLetterSink:
    """``DeadLetterSink`` writing to ``<topic><suffix>`` with reason headers.

    Parameters
    ----------
    bootstrap_servers, suffix, client_id
        The Kafka brokers, the dead-letter topics' suffix and the worker's client id.
    max_request_size
        The producer's largest request; a dead letter that would not fit is sent with its
        value cut (see the module's docstring). Keep it at or below the dead-letter topics'
        ``max.message.bytes``; a dead letter the broker refuses as too large is cut too.
    retry
        How many times a dead letter is sent before `flush` gives up on it.
    timeout_s
        How long one attempt waits to connect, to learn a topic's partitions, and for the
        acknowledgement. `flush` returns or raises within about
        ``retry.attempts * 2 * timeout_s`` plus the backoffs.
    producer_factory
        Builds the producer from kafka-python's keyword settings: kafka-python's own, or
        librdkafka's (`livelearn.stream._confluent_clients.confluent_producer`), or a fake
        one in tests. It is called on the first send, and again after it failed: a sink can
        be built while Kafka is down.

    Queued dead letters, values included, are kept until `flush` confirms them, so that
    the failed ones can be sent again.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        suffix: str,
        client_id: str,
        *,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        producer_factory: Callable[..., Producer] = KafkaProducer,
    ) -> None:
        if max_request_size < _MIN_REQUEST_SIZE:
            raise ConfigError(
                f"max_request_size={max_request_size} leaves no room for a dead letter's "
                f"headers; use at least {_MIN_REQUEST_SIZE}"
            )
        if timeout_s < 0.1:
            raise ConfigError(f"timeout_s={timeout_s}: give an attempt at least 0.1 seconds")
        linger_ms = 5
        timeout_ms = int(timeout_s * 1000)
        self._config: dict[str, Any] = {
            "bootstrap_servers": server_list(bootstrap_servers),
            "client_id": f"{client_id}-dlq",
            # acks=all: a dead letter must be durable before the checkpoint that skips it;
            # idempotence: the producer's own retries never write it twice.
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "max_request_size": max_request_size,
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
            # kafka-python requires delivery_timeout_ms >= linger_ms + request_timeout_ms.
            "request_timeout_ms": timeout_ms - linger_ms,
            "delivery_timeout_ms": timeout_ms,
        }
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._suffix = suffix
        self._max_request_size = max_request_size
        self._retry = retry if retry is not None else RetryPolicy()
        self._timeout_s = timeout_s
        # By dedup key: a source offset dead-lettered again while its letter waits (a
        # transaction's records read again) is sent once.
        self._pending: dict[str, _Letter] = {}
        # Set when the producer cannot be built or a send raised: later sends wait for
        # flush's retries instead of blocking the worker loop for timeout_s each.
        self._failing: str | None = None

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
        """Queue one dead letter; ``source`` is (topic, partition, offset)."""
        src_topic, partition, offset = source
        dedup = dedup_key(source, reason, model)
        # backslashreplace: a detail quoting undecodable input must not fail the send.
        headers: list[tuple[str, bytes]] = [
            ("livelearn.reason", reason.encode()),
            ("livelearn.detail", detail[:_DETAIL_CHARS].encode(errors="backslashreplace")),
            ("livelearn.source.topic", src_topic.encode()),
            ("livelearn.source.partition", str(partition).encode()),
            ("livelearn.source.offset", str(offset).encode()),
            ("livelearn.dedup_key", dedup.encode()),
        ]
        # A null value is sent empty: Kafka refuses a record with neither key nor value.
        letter = _Letter(dlq_topic(topic, self._suffix), value or b"", key, headers, source, dedup)
        while letter.size() > self._max_request_size and (letter.value or letter.key):
            letter.cut()
        self._pending[dedup] = letter
        self._submit(letter)

    def flush(self) -> None:
        """Block until every queued dead letter is acknowledged, retrying failed ones.

        Raises
        ------
        DeadLetterError
            Naming the source of each dead letter not acknowledged after every retry.
            Those stay queued: the next flush sends them again.

        """
        if not self._pending:
            return
        for letter in self._pending.values():
            if letter.future is None and letter.cause is not None:  # failed at a last flush
                self._submit(letter)
        failed = self._confirm(list(self._pending.values()))
        attempt = 1
        while failed and attempt < self._retry.attempts:
            wait = self._retry.backoff(attempt)
            log.warning(
                "%d dead letter(s) not acknowledged, sending them again in %.2fs",
                len(failed),
                wait,
                extra={"fields": {"attempt": attempt, "cause": failed[0].cause}},
            )
            time.sleep(wait)
            attempt += 1
            self._failing = None
            self._replace_producer()
            for letter in failed:
                self._submit(letter)
            failed = self._confirm(failed)
        self._pending = {letter.dedup: letter for letter in failed}
        self._failing = None
        if failed:
            self._replace_producer()
            raise DeadLetterError(
                [letter.source for letter in failed], [str(letter.cause) for letter in failed]
            )

    def close(self) -> None:
        """Flush and close the producer."""
        try:
            self.flush()
        finally:
            if self._producer is not None:
                close_producer(self._producer, 10)
                self._producer = None

    def _replace_producer(self) -> None:
        """Drop the producer after a failed attempt; the next send builds a new one.

        kafka-python's idempotent producer can stay stuck on a partition's dead leader
        after a failover, for good: sending again on it is no retry. A letter the old one
        still delivers arrives twice, with the same dedup key.
        """
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                close_producer(self._producer, 0)
            self._producer = None

    def _submit(self, letter: _Letter) -> None:
        """Hand one dead letter to the producer, building it first if need be."""
        letter.future, letter.cause = None, None
        if self._failing is not None:
            letter.cause = self._failing
            return
        try:
            if self._producer is None:
                self._producer = self._factory(**self._config)
            letter.future = self._producer.send(
                letter.topic, value=letter.value, key=letter.key, headers=letter.headers
            )
        except KafkaError as exc:
            self._fail(letter, exc)
            if not isinstance(exc, _TOO_LARGE):
                self._failing = letter.cause

    def _confirm(self, letters: list[_Letter]) -> list[_Letter]:
        """Wait up to ``timeout_s`` in all for the letters' acknowledgements; the letters
        whose send did not succeed.

        kafka-python acknowledges each letter from its own thread, and its ``flush`` waits
        up to the timeout for each batch in turn, so the letters are waited for first,
        against one deadline. librdkafka reports only from ``flush``, which is bounded as
        a whole. On a timeout, the letters still in flight fail below and are sent again.
        """
        deadline = time.monotonic() + self._timeout_s
        if self._producer is not None and any(letter.future is not None for letter in letters):
            for letter in letters:
                if letter.future is not None and not letter.future.is_done:
                    with contextlib.suppress(KafkaError):
                        letter.future.get(timeout=max(deadline - time.monotonic(), 0.0))
            with contextlib.suppress(KafkaError):
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.0))
        failed = []
        for letter in letters:
            future, letter.future = letter.future, None
            if future is not None:
                if not future.is_done:
                    letter.cause = f"not acknowledged within {self._timeout_s}s"
                else:
                    try:
                        future.get(timeout=0)
                    except KafkaError as exc:
                        self._fail(letter, exc)
            if letter.cause is not None:
                failed.append(letter)
        return failed

    @staticmethod
    def _fail(letter: _Letter, error: KafkaError) -> None:
        """Note why a send failed; cut a letter refused as too large, so the next one fits."""
        letter.cause = _describe(error)
        if isinstance(error, _TOO_LARGE):
            letter.cut()


def close_producer(producer: Producer, timeout: float) -> None:
    """Close ``producer`` within about ``timeout`` seconds, even with records it could not
    deliver.

    kafka-python's ``close`` flushes first, and when that times out (a broker down) it
    raises before it stops its I/O thread, which then reconnects for the life of the
    process (and draws on the global ``random``). Its undelivered records have failed by
    then (their owner sends them again), so the thread is stopped by force.
    """
    try:
        producer.close(timeout=timeout)
    except KafkaError:
        sender = getattr(producer, "_sender", None)  # kafka-python's I/O thread
        if sender is None:
            raise
        sender.force_close()  # fails what it still holds
        sender.join(timeout)
        with contextlib.suppress(KafkaError):  # the thread is told to stop whatever this says
            producer.close(timeout=0)


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    """A dead letter's ``livelearn.*`` headers as a dict of strings.

    >>> read_headers([("livelearn.reason", b"not_json"), ("other", b"x")])
    {'reason': 'not_json'}
    """
    return {
        k.removeprefix("livelearn."): v.decode()
        for k, v in headers or []
        if k.startswith("livelearn.")
    }
