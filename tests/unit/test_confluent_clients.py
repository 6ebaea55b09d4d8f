"""The producer and the label router's consumer on librdkafka (stream/_confluent_clients.py),
against a stand-in for confluent-kafka's ``Producer``: the settings it is given, the
errors it raises in kafka-python's terms, and the dead-letter sink driving it. The same
clients run on the real broker in tests/integration (test_dead_letters.py,
test_label_topic.py, for each client)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError as KafkaPythonError
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

from livelearn import ConfigError
from livelearn.settings import Settings
from livelearn.stream._confluent import ConfluentConsumer
from livelearn.stream._confluent_clients import (
    ConfluentProducer,
    confluent_label_consumer,
    confluent_producer,
    librdkafka_properties,
)
from livelearn.stream.dlq import KafkaDeadLetterSink, RetryPolicy, dead_letter_sink, read_headers
from livelearn.stream.fetcher import LocalConsumer
from livelearn.stream.label_router import LabelRouter
from livelearn.stream.metrics import WorkerMetrics
from tests.unit.test_label_router import ClosingDlq


class Message:
    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def offset(self) -> int:
        return self._offset


class FakeRdProducer:
    """confluent-kafka's ``Producer``, in memory: deliveries are reported by ``flush``, each
    with the error ``outcome`` gives the record (None: delivered)."""

    def __init__(self, config: dict[str, Any], outcome: Any = None) -> None:
        self.config = config
        self.outcome = outcome or (lambda value: None)
        self.queued: list[tuple[str, bytes, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.stuck = False  # flush reports nothing

    def produce(self, topic, value, key, on_delivery, timestamp, headers) -> None:
        if len(value) > self.config.get("message.max.bytes", 1_000_000):
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})
        self.queued.append((topic, value, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        if self.stuck:
            return len(self.queued)
        for offset, (topic, value, report) in enumerate(self.queued):
            error = self.outcome(value)
            report(None if error is None else KafkaError(error), Message(topic, offset))
        self.queued = []
        return 0

    def __getattr__(self, name: str) -> Any:  # the transactional calls
        return lambda *args: self.calls.append((name, *args))


def _producer(**config: Any) -> tuple[ConfluentProducer, list[FakeRdProducer]]:
    made: list[FakeRdProducer] = []

    def factory(properties: dict[str, Any]) -> FakeRdProducer:
        made.append(FakeRdProducer(properties, config.pop("outcome", None)))
        return made[-1]

    return ConfluentProducer(config, factory=factory), made  # type: ignore[arg-type]


def test_kafka_python_settings_map_to_librdkafka_properties() -> None:
    properties = librdkafka_properties(
        {
            "bootstrap_servers": "k:9092",
            "acks": "all",
            "enable_idempotence": True,
            "max_request_size": 2048,
            "delivery_timeout_ms": 10_000,
            "transactional_id": "labels.1",
            "max_block_ms": 10_000,  # librdkafka never blocks a send: nothing to set
        }
    )
    assert properties == {
        "bootstrap.servers": "k:9092",
        "acks": "all",
        "enable.idempotence": True,
        "message.max.bytes": 2048,
        "message.timeout.ms": 10_000,
        "transactional.id": "labels.1",
    }
    with pytest.raises(TypeError, match="compression_type"):
        librdkafka_properties({"compression_type": "zstd"})


def test_records_are_partitioned_by_murmur2_as_java_and_kafka_python_producers() -> None:
    _, made = _producer(**{"bootstrap.servers": "k:9092"})
    assert made[0].config["partitioner"] == "murmur2_random"


def test_a_configuration_librdkafka_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"queue\.buffering\.max\.ms"):  # linger.ms
        confluent_producer(bootstrap_servers="k:9092", linger_ms="soon")


def test_deliveries_report_in_kafka_pythons_terms() -> None:
    failures = {b"big": KafkaError.MSG_SIZE_TOO_LARGE, b"late": KafkaError._MSG_TIMED_OUT}
    producer, made = _producer(outcome=lambda value: failures.get(value))
    ok, big, late = (producer.send("t", value) for value in (b"ok", b"big", b"late"))
    assert not ok.is_done
    with pytest.raises(KafkaTimeoutError):  # not reported yet: flush first
        ok.get(timeout=0)
    producer.flush(timeout=1)
    assert ok.is_done and ok.get() == 0
    with pytest.raises(MessageSizeTooLargeError):
        big.get()
    with pytest.raises(KafkaTimeoutError):
        late.get()
    made[0].stuck = True
    producer.send("t", b"ok")
    with pytest.raises(KafkaTimeoutError, match="1 record"):
        producer.flush(timeout=0.1)


def test_a_record_too_large_to_send_raises_as_kafka_python_does() -> None:
    producer, _ = _producer(**{"message.max.bytes": 10})
    with pytest.raises(MessageSizeTooLargeError):
        producer.send("t", b"x" * 11)


def test_a_fatal_error_makes_a_plain_producer_anew_and_stops_a_transactional_one() -> None:
    plain, made = _producer()
    made[0].config["error_cb"](KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    plain.send("t", b"x")
    assert len(made) == 2 and made[1].sent and not made[0].sent
    transactional, made = _producer(**{"transactional.id": "x"})
    made[0].config["error_cb"](KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    with pytest.raises(KafkaPythonError, match="fenced"):
        transactional.send("t", b"x")


def test_transaction_calls_take_kafka_pythons_arguments() -> None:
    producer, made = _producer(**{"transactional.id": "x"})
    producer.init_transactions()
    producer.begin_transaction()
    producer.send_offsets_to_transaction(
        {TopicPartition("labels", 2): OffsetAndMetadata(41, "", -1)}, "group-metadata"
    )
    producer.commit_transaction()
    names = [call[0] for call in made[0].calls]
    assert names == [
        "init_transactions",
        "begin_transaction",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    positions, metadata = made[0].calls[2][1:3]
    assert [(p.topic, p.partition, p.offset) for p in positions] == [("labels", 2, 41)]
    assert metadata == "group-metadata"


def test_a_dead_letter_the_broker_refuses_as_too_large_is_sent_again_cut() -> None:
    made: list[FakeRdProducer] = []

    def factory(**config: Any) -> ConfluentProducer:
        def rd(properties: dict[str, Any]) -> FakeRdProducer:
            too_large = KafkaError.MSG_SIZE_TOO_LARGE
            made.append(FakeRdProducer(properties, lambda v: too_large if v else None))
            return made[-1]

        return ConfluentProducer(librdkafka_properties(config), factory=rd)  # type: ignore[arg-type]

    sink = KafkaDeadLetterSink(
        "k:9092", ".dlq", "w", retry=RetryPolicy(2, 0, 0), producer_factory=factory
    )
    sink.send("t", b"{" * 1000, b"k", reason="not_json", detail="x", source=("t", 0, 7))
    sink.flush()
    # sent again cut, on a new producer (the first failed its attempt)
    first, again = [record for producer in made for record in producer.sent]
    assert first["value"] == b"{" * 1000 and again["value"] == b""
    assert read_headers(again["headers"])["value_cut"] == "true"
    # acks=all and idempotence, as on kafka-python
    assert made[0].config["acks"] == "all" and made[0].config["enable.idempotence"] is True


def _settings(client: str) -> Settings:
    model = {
        "name": "m",
        "topics": ["payments"],
        "task": "binary",
        "label": "label",
        "pipeline": [{"class": "linear_model.LogisticRegression"}],
        "delayed_labels": {"topic": "labels"},
    }
    return Settings(
        kafka={"bootstrap_servers": "k:9092", "client": client},
        redis={"url": "redis://localhost:1/0"},
        models=[model],
    )


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_the_sink_and_the_router_use_the_workers_kafka_client(client) -> None:
    confluent = client == "confluent"
    sink = dead_letter_sink(_settings(client))
    assert sink._factory is (confluent_producer if confluent else KafkaProducer)
    router = LabelRouter(_settings(client), WorkerMetrics(), ClosingDlq())
    assert router._producer_factory is (confluent_producer if confluent else KafkaProducer)
    assert router._consumer_factory is (confluent_label_consumer if confluent else LocalConsumer)
    assert router._producer_config["acks"] == "all"
    assert router._producer_config["enable_idempotence"] is True


def test_the_routers_consumer_starts_at_the_committed_offsets() -> None:
    consumer = confluent_label_consumer(bootstrap_servers="127.0.0.1:1", group_id="g.labels")
    try:
        assert isinstance(consumer, ConfluentConsumer) and consumer._from_committed
    finally:
        consumer.close(timeout=5)
