"""The producer and the label router's consumer on librdkafka (``kafka.client: confluent``).

The dead-letter sink (stream/dlq.py) and the label router (stream/label_router.py) build
their Kafka clients through a factory that takes kafka-python's keyword settings: the
default factories make kafka-python's clients, and `confluent_producer` and
`confluent_label_consumer` make these, from the same settings translated to librdkafka's
properties (`librdkafka_properties`). So the sink and the router keep one configuration and
one code path on both clients.

`ConfluentProducer` behaves as the part of kafka-python's ``KafkaProducer`` they use:

- ``send`` returns a future (`Delivery`) whose ``get`` raises kafka-python's error when the
  record was not delivered: ``MessageSizeTooLargeError`` or ``RecordListTooLargeError``
  for a record too large (the sink then cuts it), ``KafkaTimeoutError`` for one not
  acknowledged in time, ``KafkaError`` for the rest. librdkafka reports deliveries from
  ``flush`` and ``poll``, on the caller's thread.
- The transactional calls (``init_transactions`` to ``abort_transaction``) take
  kafka-python's arguments; offsets go to the transaction with the consumer's group
  metadata, so a router that lost its partitions is fenced (KIP-447).
- Records are partitioned by the murmur2 hash of their key, as Java's and kafka-python's
  producers do (librdkafka's own default hashes with CRC32): a forwarded label must land in
  the partition of the event it labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException
from confluent_kafka import Producer as RdKafkaProducer
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import TopicPartition
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from livelearn.errors import ConfigError
from livelearn.stream._confluent import ConfluentConsumer

__all__ = [
    "ConfluentProducer",
    "Delivery",
    "confluent_label_consumer",
    "confluent_producer",
    "librdkafka_properties",
]

_RDKAFKA_LOG = logging.getLogger("livelearn.rdkafka")

# kafka-python's name of each setting the sink and the router use, and librdkafka's; None
# where librdkafka has nothing to set: it never blocks a send (a full queue fails at once),
# and it connects in the background.
_PROPERTIES: dict[str, str | None] = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "group_id": "group.id",
    "enable_auto_commit": "enable.auto.commit",
    "auto_offset_reset": "auto.offset.reset",
    "isolation_level": "isolation.level",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "metadata_max_age_ms": "topic.metadata.refresh.interval.ms",
    "acks": "acks",
    "enable_idempotence": "enable.idempotence",
    "linger_ms": "linger.ms",
    "max_request_size": "message.max.bytes",
    "request_timeout_ms": "request.timeout.ms",
    "delivery_timeout_ms": "message.timeout.ms",
    "transactional_id": "transactional.id",
    "transaction_timeout_ms": "transaction.timeout.ms",
    "max_block_ms": None,
    "bootstrap_timeout_ms": None,
}
# How long a transactional call waits for Kafka before it fails (the router then aborts and
# starts again): kafka-python's max_block_ms default.
_TRANSACTION_CALL_S = 60.0
# How long ``close`` waits for records still queued.
_CLOSE_S = 10.0
_TOO_LARGE = {
    RdKafkaError.MSG_SIZE_TOO_LARGE: MessageSizeTooLargeError,
    RdKafkaError.RECORD_LIST_TOO_LARGE: RecordListTooLargeError,
}
_TIMED_OUT = frozenset(
    {RdKafkaError._MSG_TIMED_OUT, RdKafkaError._TIMED_OUT, RdKafkaError.REQUEST_TIMED_OUT}
)


def librdkafka_properties(config: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka's properties for a client's kafka-python keyword settings.

    >>> librdkafka_properties({"bootstrap_servers": ["k1:9092", "k2:9092"], "acks": "all"})
    {'bootstrap.servers': 'k1:9092,k2:9092', 'acks': 'all'}

    Raises
    ------
    TypeError
        A setting without a librdkafka counterpart here (a new one needs its row).
    """
    unknown = sorted(set(config) - set(_PROPERTIES))
    if unknown:
        raise TypeError(f"no librdkafka property for the Kafka client setting(s) {unknown}")
    return {
        prop: ",".join(value) if isinstance(value, list) else value  # kafka-python's list
        for name, value in config.items()
        if (prop := _PROPERTIES[name]) is not None and value is not None
    }


def _kafka_error(error: RdKafkaError | None, what: str) -> KafkaError:
    """kafka-python's error for librdkafka's ``error``."""
    if error is None:
        return KafkaError(what)
    code = error.code()
    text = f"{what}: {error.str()}"
    if code in _TOO_LARGE:
        return _TOO_LARGE[code](text)
    if code in _TIMED_OUT:
        return KafkaTimeoutError(text)
    return KafkaError(text)


def _raised(exc: KafkaException, what: str) -> KafkaError:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], RdKafkaError) else None
    return _kafka_error(error, what) if error is not None else KafkaError(f"{what}: {exc}")


class Delivery:
    """The outcome of one ``send``, as kafka-python's future: ``is_done`` once librdkafka
    has reported it (from ``flush`` or ``poll``), and ``get`` raising if it failed."""

    def __init__(self) -> None:
        self.is_done = False
        self._error: KafkaError | None = None
        self._offset = -1

    def get(self, timeout: float | None = None) -> int:
        """The record's offset; kafka-python's error when it was not delivered, or is not
        reported yet (this never waits: the producer's ``flush`` does)."""
        if not self.is_done:
            raise KafkaTimeoutError("the delivery is not reported yet: flush the producer")
        if self._error is not None:
            raise self._error
        return self._offset

    def done(self, error: RdKafkaError | None, message: Any) -> None:
        """librdkafka's delivery report."""
        if error is not None:
            self._error = _kafka_error(error, f"delivery to {message.topic()}")
        else:
            self._offset = int(message.offset())
        self.is_done = True


class ConfluentProducer:
    """The part of kafka-python's ``KafkaProducer`` the dead-letter sink and the label
    router use, on librdkafka.

    Parameters
    ----------
    config
        librdkafka's properties (`librdkafka_properties`); the murmur2 partitioner and the
        logger are added.
    factory
        Makes the librdkafka producer; a test can pass a fake.

    Raises
    ------
    ConfigError
        librdkafka refuses the configuration (it names the property).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        factory: Callable[[dict[str, Any]], RdKafkaProducer] = RdKafkaProducer,
    ) -> None:
        self._config = {
            "partitioner": "murmur2_random",
            **config,
            "error_cb": self._on_error,
            "logger": _RDKAFKA_LOG,
        }
        self._factory = factory
        self._fatal: str | None = None
        self._producer = self._make()

    def _make(self) -> RdKafkaProducer:
        try:
            return self._factory(dict(self._config))
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"librdkafka refuses the Kafka producer's configuration: {exc}; check the "
                "kafka.* and dead_letters.* settings it names"
            ) from None

    def _on_error(self, error: RdKafkaError) -> None:
        """librdkafka's errors; it reconnects by itself, but a fatal one ends the producer
        (an idempotent producer whose sequence the broker lost, say)."""
        if error.fatal():
            self._fatal = error.str()
            _RDKAFKA_LOG.error("Kafka producer: fatal error: %s", error.str())
        else:
            _RDKAFKA_LOG.debug("Kafka producer: %s", error.str())

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> Delivery:
        """Queue one record; its `Delivery` says how it went once reported. After a fatal
        error a plain producer is made again (the records it still held have failed); a
        transactional one raises, for its owner to start again."""
        if self._fatal is not None:
            if "transactional.id" in self._config:
                raise KafkaError(f"the Kafka producer hit a fatal error: {self._fatal}")
            self._fatal = None
            self._producer = self._make()
        delivery = Delivery()
        try:
            self._producer.produce(
                topic,
                value,
                key,
                on_delivery=delivery.done,
                timestamp=0 if timestamp_ms is None else timestamp_ms,  # 0: stamped now
                headers=headers,
            )
        except KafkaException as exc:  # too large, unknown topic...: as kafka-python raises
            raise _raised(exc, f"send to {topic}") from None
        except BufferError as exc:  # librdkafka's queue is full
            raise KafkaError(f"send to {topic}: {exc}") from None
        self._producer.poll(0)  # reports of earlier sends
        return delivery

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every queued record's report.

        Raises
        ------
        KafkaTimeoutError
            Some are not reported within ``timeout`` seconds.
        """
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} record(s) not acknowledged within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the records still queued (librdkafka lets go
        of the producer when it is collected)."""
        left = self._producer.flush(_CLOSE_S if timeout is None else timeout)
        if left:
            _RDKAFKA_LOG.warning("the Kafka producer closed with %d record(s) not sent", left)

    # -- transactions --------------------------------------------------------------------

    def init_transactions(self) -> None:
        self._call("init_transactions", self._producer.init_transactions, _TRANSACTION_CALL_S)

    def begin_transaction(self) -> None:
        self._call("begin_transaction", self._producer.begin_transaction)

    def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any
    ) -> None:
        positions = [
            RdTopicPartition(tp.topic, tp.partition, o.offset) for tp, o in offsets.items()
        ]
        self._call(
            "send_offsets_to_transaction",
            self._producer.send_offsets_to_transaction,
            positions,
            group_metadata,
            _TRANSACTION_CALL_S,
        )

    def commit_transaction(self) -> None:
        self._call("commit_transaction", self._producer.commit_transaction, _TRANSACTION_CALL_S)

    def abort_transaction(self) -> None:
        self._call("abort_transaction", self._producer.abort_transaction, _TRANSACTION_CALL_S)

    def _call(self, what: str, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except KafkaException as exc:
            raise _raised(exc, what) from None


def confluent_producer(**config: Any) -> ConfluentProducer:
    """A `ConfluentProducer` from kafka-python's keyword settings (a producer factory of
    the dead-letter sink and the label router)."""
    return ConfluentProducer(librdkafka_properties(config))


def confluent_label_consumer(**config: Any) -> ConfluentConsumer:
    """The label router's consumer on librdkafka, from kafka-python's keyword settings: it
    starts each partition at the group's committed offset (the router commits them in its
    transactions), with kafka-python's eager assignors (librdkafka's default)."""
    return ConfluentConsumer(librdkafka_properties(config), from_committed=True)
