"""Forwards delayed labels from a separate topic to the topic of the model they label.

A model with ``delayed_labels.topic`` takes its label-only events (``id``, the label,
optionally ``ts``) from that topic. A label must meet the prediction it labels in the
same shard, so the router produces each one again to the model's topic, keyed like the
event it labels: the label record's key, else the event's ``key`` field, else its ``id``
(the prediction log keys each record the same way). Kafka's default partitioner (murmur2,
as Java and kafka-python producers use) then maps it to the partition that event went to,
whatever the label topic's partition count. The forwarded record keeps the label's value
and timestamp, and names its source in a ``livelearn.label.source`` header.

Exactly once: each polled batch of forwarded labels and the label offsets it consumed are
one Kafka transaction (the consumer group's metadata fences a router that lost its
partitions, KIP-447), and the worker reads with ``isolation_level=read_committed``. A
router killed mid-batch forwards nothing of it; its successor forwards it again, once.
A record that is not a label-only event goes to the label topic's dead-letter topic with
its reason; dead letters are flushed before the transaction commits, so none is lost.

Any failure aborts the batch; the router then drops its consumer and producer and starts
again from the committed offsets, after a backoff, until the worker stops.

The router's clients are the worker's Kafka client's (``kafka.client``): kafka-python's,
or librdkafka's (stream/_confluent_clients.py), both made from the same kafka-python
keyword settings. Its group always rebalances eagerly, with the assignors both clients
offer, so routers of both clients can share it while a deployment moves between them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from livelearn.errors import InvalidEvent
from livelearn.learners import ModelSpec
from livelearn.settings import Settings, server_list
from livelearn.stream._confluent_clients import confluent_label_consumer, confluent_producer
from livelearn.stream.decode import EventDecoder
from livelearn.stream.dlq import (
    DeadLetterSink,
    Producer,
    as_invalid,
    close_producer,
    dead_letter_record,
)
from livelearn.stream.fetcher import KafkaRecord, KafkaStatus, LocalConsumer
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.outage import Backoff

log = logging.getLogger("livelearn.labels")

SOURCE_HEADER = "livelearn.label.source"


@dataclass(frozen=True)
class Route:
    """Where the labels of one label topic go: each model topic, with the label fields of
    the models that learn from it."""

    label_topic: str
    targets: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def label_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for _, fields in self.targets for f in fields))


def label_routes(specs: Iterable[ModelSpec]) -> dict[str, Route]:
    """The routes of every model that takes its labels from a separate topic.

    >>> spec = ModelSpec(
    ...     name="m", topics=["payments"], task="binary", label="fraud",
    ...     delayed_labels={"topic": "chargebacks"},
    ...     pipeline=[{"class": "linear_model.LogisticRegression"}],
    ... )
    >>> label_routes([spec])
    {'chargebacks': Route(label_topic='chargebacks', targets=(('payments', ('fraud',)),))}
    """
    found: dict[str, dict[str, list[str]]] = {}
    for spec in specs:
        delayed = spec.delayed_labels
        if delayed is None or delayed.topic is None:
            continue
        fields = found.setdefault(delayed.topic, {}).setdefault(spec.topics[0], [])
        if spec.label not in fields:
            fields.append(spec.label)
    return {
        topic: Route(topic, tuple((t, tuple(f)) for t, f in sorted(targets.items())))
        for topic, targets in sorted(found.items())
    }


class _Consumer(Protocol):
    """The router's consumer: kafka-python's (`LocalConsumer`, which loads the metadata
    once subscribed and finishes a join left unfinished) or librdkafka's."""

    def subscribe(self, topics: list[str]) -> None: ...
    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[KafkaRecord]]: ...
    def group_metadata(self) -> Any: ...
    def status(self) -> KafkaStatus: ...
    def close(self) -> None: ...


class _Sink(DeadLetterSink, Protocol):
    def close(self) -> None: ...


class _Producer(Producer, Protocol):
    """A transactional producer."""

    def init_transactions(self) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any
    ) -> None: ...
    def commit_transaction(self) -> None: ...
    def abort_transaction(self) -> None: ...


class LabelRouter:
    """Forwards the label topics' records, exactly once, until ``stop()`` (see the module).

    Parameters
    ----------
    settings
        Its models give the routes; ``kafka`` the brokers, group and poll settings. The
        router's consumer group is ``<kafka.group_id>.labels``.
    metrics
        Where the forwarded and dead-lettered labels and the failures are counted.
    dlq
        The dead-letter sink for records that are not label-only events. Used from the
        router's thread only: give it one of its own. Closed when ``run`` returns.
    consumer_factory, producer_factory
        Build the Kafka clients from kafka-python's keyword settings; by default those of
        ``kafka.client`` (fakes in tests).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        dlq: _Sink,
        *,
        consumer_factory: Callable[..., _Consumer] | None = None,
        producer_factory: Callable[..., _Producer] | None = None,
    ) -> None:
        self.routes = label_routes(settings.models)
        if not self.routes:
            raise ValueError("no model takes its labels from a separate topic")
        k = settings.kafka
        bootstrap = settings.require_services()[0]
        self.group_id = f"{k.group_id}.labels"
        self._consumer_config: dict[str, Any] = {
            "bootstrap_servers": server_list(bootstrap),
            "group_id": self.group_id,
            "client_id": f"{k.client_id}-labels",
            "enable_auto_commit": False,
            "auto_offset_reset": k.auto_offset_reset,
            "isolation_level": "read_committed",
            "session_timeout_ms": k.session_timeout_ms,
            "heartbeat_interval_ms": k.heartbeat_interval_ms,
            "max_poll_interval_ms": k.max_poll_interval_ms,
            "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
            "metadata_max_age_ms": k.metadata_max_age_ms,
        }
        # A fresh id per router: with KIP-447 the group's generation, not the id, fences a
        # router that lost its partitions. A crashed router's open transaction is aborted
        # by the broker after transaction_timeout_ms, which bounds how long the model
        # topic's readers wait behind it.
        self._producer_config: dict[str, Any] = {
            "bootstrap_servers": server_list(bootstrap),
            "client_id": f"{k.client_id}-labels",
            "transactional_id": f"{self.group_id}.{uuid.uuid4().hex}",
            # What a transactional producer needs, said outright for both clients.
            "acks": "all",
            "enable_idempotence": True,
            "transaction_timeout_ms": _TRANSACTION_TIMEOUT_MS,
            "max_request_size": k.max_partition_fetch_bytes,
        }
        self._poll_ms = k.poll_timeout_ms
        self._max_records = k.max_poll_records
        self._decoders = {
            topic: EventDecoder(settings.events, route.label_fields, label_only=True)
            for topic, route in self.routes.items()
        }
        self._metrics = metrics
        self._dlq = dlq
        confluent = k.client == "confluent"
        self._consumer_factory: Callable[..., _Consumer] = consumer_factory or (
            confluent_label_consumer if confluent else LocalConsumer
        )
        self._producer_factory: Callable[..., _Producer] = producer_factory or (
            confluent_producer if confluent else KafkaProducer
        )
        self._consumer: _Consumer | None = None
        self._producer: _Producer | None = None
        self._backoff = Backoff(settings.outage.retry_initial_s, settings.outage.retry_max_s)
        self._stall_s = settings.outage.stall_timeout_s
        self._unsettled_since: float | None = None  # the consumer is not a stable member
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish the batch in hand, then leave the group and close (``run`` returns)."""
        self._stop.set()

    def run(self) -> None:
        """Forward until ``stop()``; every failure aborts the batch and starts afresh."""
        log.info(
            "forwarding labels",
            extra={
                "fields": {
                    "routes": {
                        t: [target for target, _ in r.targets] for t, r in self.routes.items()
                    },
                    "group": self.group_id,
                }
            },
        )
        while not self._stop.is_set():
            try:
                self._connect()
                while not self._stop.is_set():
                    self._forward_batch()
                    self._backoff.reset()
            except Exception as exc:
                self._metrics.label_router_errors.inc()
                delay = self._backoff.next_delay()
                log.warning(
                    "label forwarding failed, the batch is aborted; starting again from the "
                    "committed offsets in %.1f s: %s: %s",
                    delay,
                    type(exc).__name__,
                    exc,
                )
                self._close()
                self._stop.wait(delay)
        self._close()
        self._dlq.close()

    def _connect(self) -> None:
        if self._producer is None:
            producer = self._producer_factory(**self._producer_config)
            self._producer = producer  # closed by _close even if the next call fails
            producer.init_transactions()
        if self._consumer is None:
            self._consumer = self._consumer_factory(**self._consumer_config)
            self._consumer.subscribe(sorted(self.routes))
            self._unsettled_since = None

    def _forward_batch(self) -> None:
        consumer, producer = self._consumer, self._producer
        assert consumer is not None and producer is not None
        batches = consumer.poll(timeout_ms=self._poll_ms, max_records=self._max_records)
        batches = {tp: records for tp, records in batches.items() if records}
        if not batches:
            self._check_member(consumer)
            return
        self._unsettled_since = None
        producer.begin_transaction()
        try:
            counts: dict[tuple[str, str], int] = {}
            for tp, records in batches.items():
                for rec in records:
                    outcome = self._forward(producer, rec)
                    counts[(tp.topic, outcome)] = counts.get((tp.topic, outcome), 0) + 1
            self._dlq.flush()  # raises before the offsets commit if a letter is not durable
            offsets = {
                tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
                for tp, records in batches.items()
            }
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
        except BaseException:
            try:
                producer.abort_transaction()
            except Exception as exc:  # the producer is dropped with the rest in `run`
                log.debug("abort failed: %s", exc)
            raise
        for (topic, outcome), n in counts.items():
            self._metrics.labels_forwarded.labels(topic, outcome).inc(n)

    def _check_member(self, consumer: _Consumer) -> None:
        """Raise when the consumer has not been a stable member of its group for
        ``outage.stall_timeout_s`` (kafka-python can stay out of a group after a rebalance
        went wrong; librdkafka says so in its statistics): `run` then replaces it, as the
        worker's watchdog replaces its own."""
        status = consumer.status()
        if status.joined:
            self._unsettled_since = None
        elif self._unsettled_since is None:
            self._unsettled_since = status.at
        elif status.at - self._unsettled_since > self._stall_s:
            raise ConnectionError(
                f"the consumer has not been a stable member of group {self.group_id!r} for "
                f"{status.at - self._unsettled_since:.0f} s (outage.stall_timeout_s="
                f"{self._stall_s:g})"
            )

    def _forward(self, producer: _Producer, rec: KafkaRecord) -> str:
        """Send one label record to its model topics, or dead-letter it; the outcome."""
        route = self.routes[rec.topic]
        try:
            event = self._decoders[rec.topic].decode(rec.value, rec.timestamp)
            if event.features is not None:
                raise InvalidEvent(
                    "not_a_label",
                    "an event with features on a label topic: only label-only events "
                    "(id and label) are forwarded to the model's topic",
                )
        except Exception as exc:
            invalid = as_invalid(exc, "decode_error")
            dead_letter_record(self._dlq, rec, invalid)
            self._metrics.dead_letters.labels(rec.topic, invalid.reason).inc()
            return "dead_lettered"
        # The decoder refused a label-only event without any label: each has a target.
        targets = [
            topic
            for topic, fields in route.targets
            if any(event.fields.get(f) is not None for f in fields)
        ]
        key = rec.key or (event.key if event.key is not None else event.id).encode()
        headers = [(SOURCE_HEADER, f"{rec.topic}/{rec.partition}/{rec.offset}".encode())]
        stamp = rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0 else None
        for topic in targets:
            producer.send(topic, value=rec.value, key=key, headers=headers, timestamp_ms=stamp)
        return "forwarded"

    def _close(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            _quietly(consumer.close)
        if producer is not None:
            _quietly(lambda: close_producer(producer, _CLOSE_TIMEOUT_S))


def _quietly(close: Callable[[], None]) -> None:
    """Close a client that may be broken already: a failure is only worth a debug line."""
    try:
        close()
    except Exception as exc:
        log.debug("closing a label-forwarding client failed: %s", exc)


_TRANSACTION_TIMEOUT_MS = 10_000
_CLOSE_TIMEOUT_S = 5.0
