"""Raw consume rate of the worker's Kafka clients, on one topic of Phishing events.

Each reader reads the whole topic from its start, with the worker's fetch settings, and
does nothing with the records; the rate counts from the first record to the last, so
connecting and joining a group are left out alike:

- kafka-python: ``KafkaConsumer.poll`` (the in-process backend, ``kafka.fetch_in_child:
  false``);
- kafka-python in a child: `ProcessConsumer.poll`, the default backend (the child parses,
  the worker's process unpickles the batches);
- librdkafka: confluent-kafka's ``Consumer.consume`` alone, its messages untouched;
- librdkafka as the worker gets it: `ConfluentConsumer.poll` (``kafka.client:
  confluent``), records built and grouped by partition.

``python -m bench.bench_consume [EVENTS]``; Kafka from ``LIVELEARN_KAFKA__BOOTSTRAP_SERVERS``,
else the local stack.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from bench.bench_worker import _events, services, topic_with
from livelearn.settings import KafkaSettings
from livelearn.stream._confluent import ConfluentConsumer, librdkafka_config
from livelearn.stream.fetcher import ProcessConsumer

# Each reader runs this many times; the median is shown.
RUNS = 3


def kafka_python(bootstrap: str, topic: str, n: int) -> float:
    """Microseconds a record through ``KafkaConsumer.poll``."""
    k = KafkaSettings()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        fetch_max_bytes=k.fetch_max_bytes,
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    try:
        return _rate(
            lambda: sum(
                len(r)
                for r in consumer.poll(timeout_ms=500, max_records=k.max_poll_records).values()
            ),
            n,
        )
    finally:
        consumer.close()


class _Keep(ConsumerRebalanceListener):  # type: ignore[misc]
    """Takes every partition as assigned, from its start."""

    def on_partitions_revoked(self, revoked: object) -> None:
        pass

    def on_partitions_assigned(self, assigned: object) -> None:
        pass


def kafka_python_child(bootstrap: str, topic: str, n: int) -> float:
    """Microseconds a record through `ProcessConsumer.poll`, the default backend."""
    k = KafkaSettings()
    config = {
        "bootstrap_servers": bootstrap,
        "group_id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": k.max_poll_records,
        "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
        "fetch_max_bytes": k.fetch_max_bytes,
    }
    consumer = ProcessConsumer(config, k.poll_timeout_ms)
    consumer.subscribe([topic], _Keep())
    try:
        return _rate(lambda: sum(len(r) for r in consumer.poll(500).values()), n)
    finally:
        consumer.close()


def librdkafka_raw(bootstrap: str, topic: str, n: int) -> float:
    """Microseconds a record through confluent-kafka's ``consume``, messages untouched."""
    k = KafkaSettings()
    config = librdkafka_config(k, bootstrap)
    del config["statistics.interval.ms"]
    consumer = RdKafkaConsumer({**config, "group.id": f"bench-{uuid.uuid4().hex[:8]}"})
    consumer.assign([RdTopicPartition(topic, 0, 0)])
    try:
        # consume(n, 0) as the worker's poll does: consume with a timeout waits it out.
        return _rate(lambda: len(consumer.consume(k.max_poll_records, 0)), n)
    finally:
        consumer.close()


def librdkafka_worker(bootstrap: str, topic: str, n: int) -> float:
    """Microseconds a record through `ConfluentConsumer.poll`, as the worker reads."""
    k = KafkaSettings(group_id=f"bench-{uuid.uuid4().hex[:8]}")
    consumer = ConfluentConsumer(librdkafka_config(k, bootstrap), k.max_poll_records)
    consumer.subscribe([topic], _Keep())
    try:
        return _rate(lambda: sum(len(r) for r in consumer.poll(500).values()), n)
    finally:
        consumer.close()


def _rate(read: Callable[[], int], n: int) -> float:
    """Microseconds a record from the first batch's arrival to the n-th record."""
    seen = first = 0
    started = 0.0
    while seen < n:
        got = read()
        if got and not started:
            started, first = time.perf_counter(), got
        seen += got
    return (time.perf_counter() - started) * 1e6 / max(1, seen - first)


READERS: dict[str, Callable[[str, str, int], float]] = {
    "kafka-python KafkaConsumer.poll": kafka_python,
    "kafka-python ProcessConsumer.poll": kafka_python_child,
    "librdkafka Consumer.consume": librdkafka_raw,
    "librdkafka ConfluentConsumer.poll": librdkafka_worker,
}


def main(events: int = 100_000) -> None:
    bootstrap, _ = services()
    topic = topic_with(bootstrap, _events(events))
    print(f"raw consume, {events} Phishing events on one partition, median of {RUNS} runs")
    print(f"(load average {os.getloadavg()[0]:.2f} at start)\n")
    print(f"{'reader':36} {'µs/record':>10} {'records/s':>12}")
    for label, reader in READERS.items():
        cost = statistics.median(reader(bootstrap, topic, events) for _ in range(RUNS))
        print(f"{label:36} {cost:10.2f} {1e6 / cost:12.0f}")
    print(f"\n(load average {os.getloadavg()[0]:.2f} at the end)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
