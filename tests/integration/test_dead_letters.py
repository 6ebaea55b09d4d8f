"""Dead letters on the real Kafka: a record too large for the dead-letter topic arrives cut,
with headers that find the original; an unreachable broker fails flush loudly, in bounded
time, naming the sources; a dead-letter topic that refuses writes pauses the worker's
partition, with nothing checkpointed past the event, until it accepts them."""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import NewTopic

from livelearn import DeadLetterError
from livelearn.settings import TopicSettings
from livelearn.stream._confluent_clients import confluent_producer
from livelearn.stream.app import ensure_topics
from livelearn.stream.dlq import KafkaDeadLetterSink, RetryPolicy, read_headers
from tests.integration.conftest import (
    each_client,
    encode,
    free_port,
    phishing_events,
    produce,
    read_all,
    wait_for,
)
from tests.integration.test_worker import assert_learned_as_rivers_loop

MIB = 1024 * 1024

# The dead-letter producer of each Kafka client (kafka.client).
PRODUCERS = {"kafka-python": KafkaProducer, "confluent": confluent_producer}
each_producer = pytest.mark.parametrize("producer", list(PRODUCERS.values()), ids=list(PRODUCERS))


@each_producer
def test_a_5mb_dead_letter_is_delivered_cut_with_headers_that_find_the_original(
    services, kafka_admin, unique_name, producer
) -> None:
    # The source topic takes 5 MB records; its dead-letter topic keeps the broker's default
    # limit, about 1 MiB.
    source, dlq = unique_name, f"{unique_name}.dlq"
    big_records = {"max.message.bytes": str(8 * MIB)}
    kafka_admin.create_topics(
        {
            source: {"num_partitions": 1, "replication_factor": 1, "configs": big_records},
            dlq: {"num_partitions": 1, "replication_factor": 1},
        },
        wait_for_metadata=True,
    )
    try:
        _dead_letter_a_5mb_record(services.bootstrap_servers, source, dlq, producer)
    finally:
        kafka_admin.delete_topics([source, dlq])


def _dead_letter_a_5mb_record(bootstrap: str, source: str, dlq: str, factory: Any) -> None:
    big = bytes(range(256)) * (5 * MIB // 256)
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * MIB)
    producer.send(source, big, key=b"k1")
    producer.send(source, b"{not json", key=b"k2")
    producer.flush(timeout=30)
    producer.close(timeout=10)
    records = read_all(bootstrap, source, timeout=30)
    assert [len(r.value) for r in records] == [len(big), 9]

    sink = KafkaDeadLetterSink(bootstrap, ".dlq", "it", producer_factory=factory)
    for rec, reason in zip(records, ["too_large", "not_json"], strict=True):
        source_of = (rec.topic, rec.partition, rec.offset)
        sink.send(rec.topic, rec.value, rec.key, reason=reason, detail="x", source=source_of)
    sink.flush()
    sink.close()

    cut, whole = read_all(bootstrap, dlq, timeout=30)
    assert cut.value == b"" and cut.key == b"k1"
    headers = read_headers(cut.headers)
    assert headers["value_cut"] == "true"
    assert headers["value_bytes"] == str(len(big))
    assert headers["value_sha256"] == hashlib.sha256(records[0].value).hexdigest()
    assert headers["dedup_key"] == f"{source}/0/{records[0].offset}/too_large"
    assert (headers["source.topic"], headers["source.offset"]) == (source, "0")
    assert whole.value == b"{not json" and whole.key == b"k2"
    assert "value_cut" not in read_headers(whole.headers)
    assert read_headers(whole.headers)["dedup_key"] == f"{source}/0/1/not_json"


# kafka-python 3.0's sock_connect does not close the socket of a refused connection; the
# garbage collector does, with a ResourceWarning that the gc.collect() below keeps inside
# this test. kafka's own log records would hold the sockets (through their tracebacks)
# until the test's report: they are not made.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@each_producer
def test_an_unreachable_broker_fails_flush_naming_the_sources_in_bounded_time(
    caplog, producer
) -> None:
    caplog.set_level(logging.CRITICAL + 1, logger="kafka")
    caplog.set_level(logging.CRITICAL + 1, logger="livelearn.rdkafka")
    retry = RetryPolicy(attempts=3, backoff_s=0.1)
    timeout_s = 1.0
    sink = KafkaDeadLetterSink(
        f"127.0.0.1:{free_port()}",
        ".dlq",
        "it",
        retry=retry,
        timeout_s=timeout_s,
        producer_factory=producer,
    )
    started = time.monotonic()
    sink.send("t", b"{", None, reason="not_json", detail="x", source=("t", 0, 41))
    sink.send("t", b"[", None, reason="not_json", detail="x", source=("t", 1, 42))
    sent = time.monotonic()
    with pytest.raises(DeadLetterError) as caught:
        sink.flush()
    flushed = time.monotonic()

    assert caught.value.sources == [("t", 0, 41), ("t", 1, 42)]
    assert "t/0@41" in str(caught.value) and "t/1@42" in str(caught.value)
    assert all(cause for cause in caught.value.causes)
    # The worker loop waited for one attempt, not one per dead letter; flush for every
    # attempt, within the bound the sink documents.
    assert sent - started < 2 * timeout_s + 1
    bound = retry.attempts * 2 * timeout_s + sum(retry.backoff(n) for n in range(1, 3))
    assert flushed - sent < bound + 2
    with pytest.raises(DeadLetterError):  # still queued: closing tries them once more
        sink.close()
    gc.collect()


BAD = b'{"id": "bad", "features": "not an object"}'


@each_client
def test_a_missing_dead_letter_topic_pauses_the_partition_until_it_is_back(
    kafka_admin, deploy, unique_name, client
) -> None:
    topic = f"{unique_name}-{client}"
    dlq = f"{topic}.dlq"
    dep = deploy(
        topic,
        settings={
            "kafka": {"client": client},
            "dead_letters": {"attempts": 2, "timeout_s": 1, "backoff_s": 0.1},
            "outage": {"timeout_s": 300, "retry_initial_s": 0.5, "retry_max_s": 2},
        },
        checkpoint={"every_events": 37, "every_seconds": 0.3},
    )
    events = phishing_events(n=400)
    values: list[bytes | None] = [
        BAD if i % 50 == 49 else value for i, value in enumerate(encode(events))
    ]
    ensure_topics(dep.bootstrap, {topic: 1}, TopicSettings())
    produce(dep.bootstrap, topic, values[:10])
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 10, 60, "10 events learned", context=worker.tail)
    # An operator deletes the dead-letter topic the worker made (the broker creates none
    # by itself): every dead letter is refused until it is back.
    kafka_admin.delete_topics([dlq])
    wait_for(lambda: dlq not in kafka_admin.list_topics(), 30, "the topic gone")
    produce(dep.bootstrap, topic, values[10:])
    up = 'livelearn_dependency_up{dependency="dead_letters"}'
    wait_for(lambda: f"{up} 0.0" in worker.metrics(), 60, "the outage", context=worker.tail)
    time.sleep(3)  # the retries go on; nothing may pass the first bad event meanwhile
    assert 10 <= dep.next_offset() <= 49, worker.tail()
    assert 'livelearn_dead_letter_failures_total{topic="' in worker.metrics()
    status, body = worker.readyz()
    assert status == 503 and body["dead_letters"] is False, body
    assert body["undelivered"] == [f"{topic}/0"], body

    kafka_admin.create_topics(
        [NewTopic(dlq, num_partitions=1, replication_factor=1)], wait_for_metadata=True
    )
    wait_for(lambda: dep.next_offset() == 400, 120, "every event learned", context=worker.tail)
    assert f"{up} 1.0" in worker.metrics()
    assert worker.terminate() == 0, worker.tail()
    valid = [e for e, v in zip(events, values, strict=True) if v != BAD]
    assert_learned_as_rivers_loop(dep.learner(), valid)
    letters = read_all(dep.bootstrap, dlq, timeout=30)
    sources = {int(read_headers(r.headers)["source.offset"]) for r in letters}
    assert sources == {i for i, v in enumerate(values) if v == BAD}
