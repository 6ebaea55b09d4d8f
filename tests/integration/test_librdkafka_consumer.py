"""The librdkafka consumer (stream/_confluent.py) on the real broker: what the worker
relies on from librdkafka itself, which a stand-in cannot show. A seek of a partition
just assigned holds against the group's committed offsets, a pause never loses or repeats
a record, a commit made just before closing reaches the group, and the offset lookups
and the status answer.

The worker's own guarantees on this consumer are proven by the worker's tests, which run
on each backend (tests/integration/conftest.py: `CONSUMERS`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from livelearn.settings import KafkaSettings
from livelearn.stream._confluent import ConfluentConsumer, librdkafka_config
from tests.integration.conftest import produce, wait_for

pytestmark = pytest.mark.integration


class Listener:
    """As the worker's: new partitions stay paused until claimed."""

    def __init__(self, consumer: ConfluentConsumer) -> None:
        self.consumer = consumer
        self.assigned: list[TopicPartition] = []

    def on_partitions_assigned(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)
        self.consumer.pause(*tps)

    def on_partitions_revoked(self, tps: list[TopicPartition]) -> None:
        self.assigned = []


Subscribe = Callable[..., ConfluentConsumer]


@pytest.fixture
def subscribe(services: Any) -> Iterator[Subscribe]:
    """``subscribe(topic, group=None)``: a consumer holding the topic's partitions, paused."""
    made: list[ConfluentConsumer] = []

    def make(topic: str, group: str | None = None) -> ConfluentConsumer:
        settings = KafkaSettings(
            group_id=group or f"g-{uuid.uuid4().hex[:8]}",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        consumer = ConfluentConsumer(librdkafka_config(settings, services.bootstrap_servers))
        made.append(consumer)
        listener = Listener(consumer)
        consumer.subscribe([topic], listener)
        wait_for(lambda: not consumer.poll(100) and listener.assigned, 30, "an assignment")
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def _read(consumer: ConfluentConsumer, n: int, timeout: float = 30) -> dict[int, list[int]]:
    """The offsets of the next ``n`` records, by partition."""
    out: dict[int, list[int]] = {}
    deadline = time.monotonic() + timeout
    while sum(map(len, out.values())) < n and time.monotonic() < deadline:
        for tp, records in consumer.poll(200).items():
            out.setdefault(tp.partition, []).extend(r.offset for r in records)
    return out


def test_a_new_partition_is_read_from_where_it_is_sought(make_topic, services, subscribe) -> None:
    topic = make_topic(partitions=2)
    produce(services.bootstrap_servers, topic, [b"x"] * 400, partitions=2)
    # The group has committed offsets: the worker's seek wins all the same.
    group = f"g-{uuid.uuid4().hex[:8]}"
    committer = KafkaConsumer(bootstrap_servers=services.bootstrap_servers, group_id=group)
    committer.commit({TopicPartition(topic, p): OffsetAndMetadata(50, "", -1) for p in (0, 1)})
    committer.close()
    consumer = subscribe(topic, group)
    assert not consumer.poll(500)  # paused, as the worker's listener leaves them
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer.seek(tp0, 120)
    consumer.seek(tp1, 7)
    started = time.monotonic()
    consumer.resume(tp0, tp1)
    offsets = _read(consumer, 80 + 193)
    print(f"first records within {time.monotonic() - started:.3f} s of the resume")
    assert offsets == {0: list(range(120, 200)), 1: list(range(7, 200))}


def test_a_pause_loses_and_repeats_nothing(make_topic, services, subscribe) -> None:
    topic = make_topic(partitions=1)
    produce(services.bootstrap_servers, topic, [b"x"] * 3000)
    consumer = subscribe(topic)
    tp = TopicPartition(topic, 0)
    consumer.seek(tp, 0)
    consumer.resume(tp)
    seen = _read(consumer, 1)[0]  # a first batch, librdkafka fetching ahead of it
    consumer.pause(tp)
    assert not consumer.poll(500)  # what was fetched meanwhile is not returned
    consumer.resume(tp)
    seen += _read(consumer, 3000 - len(seen))[0]
    assert seen == list(range(3000))


def test_a_commit_just_before_close_reaches_the_group(make_topic, services, subscribe) -> None:
    topic = make_topic(partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = subscribe(topic, group)
    tp = TopicPartition(topic, 0)
    consumer.commit({tp: OffsetAndMetadata(42, "", -1)})  # as the worker's shutdown does
    consumer.close()
    reader = KafkaConsumer(bootstrap_servers=services.bootstrap_servers, group_id=group)
    try:
        assert reader.committed(tp) == 42
    finally:
        reader.close()


def test_offsets_and_status_answer(make_topic, services, subscribe) -> None:
    topic = make_topic(partitions=1)
    t0 = 1_700_000_000_000
    producer = KafkaProducer(bootstrap_servers=services.bootstrap_servers, acks="all")
    for i in range(100):
        producer.send(topic, b"x", partition=0, timestamp_ms=t0 + 1000 * i)
    producer.flush(timeout=30)
    producer.close()
    consumer = subscribe(topic)
    tp = TopicPartition(topic, 0)
    assert consumer.beginning_offsets([tp]) == {tp: 0}
    assert consumer.end_offsets([tp]) == {tp: 100}
    found = consumer.offsets_for_times({tp: t0 + 40_500})[tp]
    assert found is not None and found.offset == 41
    assert consumer.offsets_for_times({tp: t0 + 10**9})[tp] is None
    consumer.seek(tp, 90)
    consumer.resume(tp)
    assert _read(consumer, 10)[0] == list(range(90, 100))
    assert consumer.highwater(tp) == 100
    # librdkafka's statistics come every second: connected, stable in the group, one
    # partition, answered recently.
    wait_for(lambda: consumer.poll(100) == {} and consumer.status().joined, 10, "a status")
    status = consumer.status()
    assert status.connected and status.assigned == 1
    assert status.answered_at is not None and status.at - status.answered_at < 5
