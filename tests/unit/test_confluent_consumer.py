"""The librdkafka consumer's own logic (stream/_confluent.py), against a stand-in for
confluent-kafka's ``Consumer``: the records it builds, the order of its calls in a
rebalance, where a seek lands, its errors and its bounded close. The same consumer runs
on the real broker in tests/integration (the worker's tests, for each backend)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as RdTopicPartition
from kafka import TopicPartition
from kafka.errors import KafkaError as KafkaPythonError
from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from livelearn import ConfigError, ServiceUnavailable
from livelearn.settings import KafkaSettings, load_settings
from livelearn.stream._confluent import ConfluentConsumer, librdkafka_config, read_stats

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeRdKafka:
    """confluent-kafka's ``Consumer``, in memory: it records every call, in order."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.calls: list[tuple[Any, ...]] = []
        self.queue: list[Any] = []  # what consume() and poll() hand out
        self.arriving: list[Any] = []  # fetched while poll() waits
        self.callbacks: dict[str, Any] = {}
        self.watermarks: dict[tuple[str, int], tuple[int, int] | None] = {}
        self.fail: dict[str, Exception] = {}
        self.close_blocks = threading.Event()  # set: close() returns
        self.close_blocks.set()

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def subscribe(self, topics, on_assign, on_revoke, on_lost) -> None:
        self._call("subscribe", topics)
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self._call("consume", num_messages, timeout)
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return out

    def poll(self, timeout: float) -> Any:
        self._call("poll", timeout)
        self.queue += self.arriving
        self.arriving = []
        return self.queue.pop(0) if self.queue else None

    def assign(self, partitions) -> None:
        self._call("assign", [(p.topic, p.partition, p.offset) for p in partitions])

    def unassign(self) -> None:
        self._call("unassign")

    def incremental_assign(self, partitions) -> None:
        self._call("incremental_assign", [(p.topic, p.partition, p.offset) for p in partitions])

    def incremental_unassign(self, partitions) -> None:
        self._call("incremental_unassign", [(p.topic, p.partition) for p in partitions])

    def pause(self, partitions) -> None:
        self._call("pause", [(p.topic, p.partition) for p in partitions])

    def resume(self, partitions) -> None:
        self._call("resume", [(p.topic, p.partition) for p in partitions])

    def seek(self, partition) -> None:
        self._call("seek", (partition.topic, partition.partition, partition.offset))

    def get_watermark_offsets(self, partition, timeout=None, cached=False):
        self._call("get_watermark_offsets", cached)
        return self.watermarks.get((partition.topic, partition.partition))

    def offsets_for_times(self, partitions, timeout=None):
        self._call("offsets_for_times")
        return [
            RdTopicPartition(p.topic, p.partition, -1 if p.offset >= 10**13 else 42)
            for p in partitions
        ]

    def commit(self, offsets, asynchronous):
        self._call("commit", [(p.topic, p.partition, p.offset) for p in offsets], asynchronous)

    def close(self) -> None:
        self._call("close")
        self.close_blocks.wait()


class Listener:
    """The worker's rebalance listener: it records what it is told, and pauses new
    partitions as the worker does."""

    def __init__(self) -> None:
        self.consumer: ConfluentConsumer | None = None
        self.events: list[tuple[str, list[TopicPartition]]] = []

    def on_partitions_assigned(self, tps: list[TopicPartition]) -> None:
        self.events.append(("assigned", list(tps)))
        assert self.consumer is not None
        if tps:
            self.consumer.pause(*tps)

    def on_partitions_revoked(self, tps: list[TopicPartition]) -> None:
        self.events.append(("revoked", list(tps)))


def make(max_records: int = 100, **config: Any) -> tuple[ConfluentConsumer, FakeRdKafka, Listener]:
    fakes: list[FakeRdKafka] = []

    def factory(config: dict[str, Any]) -> FakeRdKafka:
        fakes.append(FakeRdKafka(config))
        return fakes[0]

    consumer = ConfluentConsumer({"group.id": "g", **config}, max_records, factory=factory)  # type: ignore[arg-type]
    listener = Listener()
    listener.consumer = consumer
    consumer.subscribe(["t"], listener)
    return consumer, fakes[0], listener


class Message:
    """A librdkafka message as consume() hands it over (confluent-kafka's own ``Message``
    cannot be made outside the library before 2.13)."""

    def __init__(
        self,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | None = None,
        value: bytes | None = None,
        timestamp: tuple[int, int] = (TIMESTAMP_NOT_AVAILABLE, 0),
        headers: list[tuple[str, bytes]] | None = None,
        error: KafkaError | None = None,
    ) -> None:
        self._fields = (topic, partition, offset, key, value, timestamp, headers, error)

    def topic(self) -> str | None:
        return self._fields[0]

    def partition(self) -> int | None:
        return self._fields[1]

    def offset(self) -> int | None:
        return self._fields[2]

    def key(self) -> bytes | None:
        return self._fields[3]

    def value(self) -> bytes | None:
        return self._fields[4]

    def timestamp(self) -> tuple[int, int]:
        return self._fields[5]

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._fields[6]

    def error(self) -> KafkaError | None:
        return self._fields[7]


def message(partition: int, offset: int, **kwargs: Any) -> Message:
    fields: dict[str, Any] = {
        "topic": "t",
        "partition": partition,
        "offset": offset,
        "key": None,
        "value": b"{}",
        "timestamp": (TIMESTAMP_CREATE_TIME, 1_700_000_000_000 + offset),
        **kwargs,
    }
    return Message(**fields)


def assign(fake: FakeRdKafka, *partitions: int) -> None:
    """As librdkafka does in consume(): the assignment callback, on the polling thread."""
    fake.callbacks["assign"](fake, [RdTopicPartition("t", p) for p in partitions])


def revoke(fake: FakeRdKafka, *partitions: int, lost: bool = False) -> None:
    fake.callbacks["lost" if lost else "revoke"](
        fake, [RdTopicPartition("t", p) for p in partitions]
    )


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "prop", "expected"),
    [
        ("group_id", "models", "group.id", "models"),
        ("client_id", "w-1", "client.id", "w-1"),
        ("auto_offset_reset", "latest", "auto.offset.reset", "latest"),
        ("session_timeout_ms", 7000, "session.timeout.ms", 7000),
        ("heartbeat_interval_ms", 900, "heartbeat.interval.ms", 900),
        ("max_poll_interval_ms", 60_000, "max.poll.interval.ms", 60_000),
        ("max_partition_fetch_bytes", 2048, "max.partition.fetch.bytes", 2048),
        ("fetch_max_bytes", 4096, "fetch.max.bytes", 4096),
        ("fetch_min_bytes", 10_000, "fetch.min.bytes", 10_000),
        ("fetch_max_wait_ms", 100, "fetch.wait.max.ms", 100),
        ("queued_max_messages_kbytes", 8192, "queued.max.messages.kbytes", 8192),
        ("queued_min_messages", 5000, "queued.min.messages", 5000),
        ("metadata_max_age_ms", 5000, "topic.metadata.refresh.interval.ms", 5000),
    ],
    ids=lambda v: str(v),
)
def test_settings_map_to_librdkafka_properties(setting, value, prop, expected) -> None:
    config = librdkafka_config(KafkaSettings(**{setting: value}), "k:9092")
    assert config[prop] == expected


def test_the_worker_reads_committed_records_and_commits_itself() -> None:
    config = librdkafka_config(KafkaSettings(), "k:9092")
    assert config["bootstrap.servers"] == "k:9092"
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    # kafka-python's assignors, so that a group can hold workers of both backends
    assert config["partition.assignment.strategy"] == "range,roundrobin"


def test_cooperative_assignment_uses_librdkafkas_incremental_assignor() -> None:
    settings = KafkaSettings(client="confluent", assignment="cooperative")
    assert librdkafka_config(settings, "k:9092")["partition.assignment.strategy"] == (
        "cooperative-sticky"
    )


def test_cooperative_assignment_on_kafka_python_stops_start_up_naming_both_settings() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, kafka={"client": "kafka-python", "assignment": "cooperative"})
    message = str(caught.value)
    for needle in ("kafka.assignment", "kafka.client: confluent", "kafka.assignment: eager"):
        assert needle in message, message


@pytest.mark.parametrize(
    "kafka",
    [
        {"queued_min_messages": 0},
        {"queued_max_messages_kbytes": 2_097_152},
        {"fetch_max_wait_ms": 300_001},
        {"fetch_max_bytes": 2_147_483_136},
        {"assignment": "sticky"},
    ],
    ids=lambda v: next(iter(v)),
)
def test_fetch_and_queue_sizes_librdkafka_would_refuse_stop_start_up(kafka) -> None:
    name = next(iter(kafka))
    with pytest.raises(ConfigError, match=rf"kafka\.{name}.*LIVELEARN_KAFKA__{name.upper()}"):
        load_settings(None, kafka={"client": "confluent", **kafka})


@pytest.mark.parametrize(
    "kafka",
    [
        {},
        {"fetch_max_bytes": 1024, "max_partition_fetch_bytes": 1024},
        {"queued_max_messages_kbytes": 1, "queued_min_messages": 1, "fetch_max_wait_ms": 0},
        {"fetch_max_bytes": 2_147_483_135, "queued_max_messages_kbytes": 2_097_151},
        {"assignment": "cooperative"},
    ],
    ids=["defaults", "smallest-fetch", "smallest-queue", "largest", "cooperative"],
)
def test_every_valid_setting_makes_a_consumer_librdkafka_accepts(kafka) -> None:
    settings = KafkaSettings(client="confluent", group_id="g", **kafka)
    # librdkafka checks its configuration when the consumer is made, before connecting.
    consumer = ConfluentConsumer(librdkafka_config(settings, "127.0.0.1:1"))
    consumer.close(timeout=5)


def test_a_fetch_size_past_librdkafkas_receive_limit_raises_the_limit() -> None:
    config = librdkafka_config(KafkaSettings(fetch_max_bytes=200_000_000), "k:9092")
    assert config["receive.message.max.bytes"] == 200_000_512


def test_a_configuration_librdkafka_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"session\.timeout\.ms"):
        ConfluentConsumer({"group.id": "g", "session.timeout.ms": "soon"})


def test_the_setting_names_a_closed_set_of_clients() -> None:
    assert KafkaSettings().client == "confluent"  # measured faster end to end
    assert KafkaSettings(client="kafka-python").client == "kafka-python"
    with pytest.raises(ConfigError, match=r"kafka\.client .*'confluent' or 'kafka-python'"):
        load_settings(None, kafka={"client": "librdkafka"})


# -- records ----------------------------------------------------------------------------


def test_records_have_the_fields_the_worker_reads_grouped_by_partition() -> None:
    consumer, fake, _ = make()
    fake.queue = [
        message(0, 5, key=b"k", headers=[("h", b"v")]),
        message(0, 6),
        message(1, 3, timestamp=(TIMESTAMP_NOT_AVAILABLE, 0)),
        message(0, 7, value=None),
    ]
    batches = consumer.poll(200)
    assert list(batches) == [TP0, TP1]
    first = batches[TP0][0]
    assert (first.topic, first.partition, first.offset, first.key, first.value) == (
        "t",
        0,
        5,
        b"k",
        b"{}",
    )
    assert first.timestamp == 1_700_000_000_005
    assert first.headers == [("h", b"v")]  # type: ignore[attr-defined]
    assert [r.offset for r in batches[TP0]] == [5, 6, 7]
    assert batches[TP0][2].value is None
    assert batches[TP1][0].timestamp == -1  # Kafka's "none", as kafka-python gives it
    assert batches[TP1][0].headers == ()  # type: ignore[attr-defined]  # none, untracked


def test_a_poll_takes_what_is_fetched_and_waits_only_when_nothing_is() -> None:
    consumer, fake, _ = make(max_records=3)
    fake.queue = [message(0, i) for i in range(5)]
    assert [r.offset for r in consumer.poll(200)[TP0]] == [0, 1, 2]
    assert fake.calls[-1] == ("consume", 3, 0)  # no wait: consume's timeout waits it out
    fake.calls.clear()
    fake.queue = []
    assert consumer.poll(200) == {}
    assert fake.calls == [("consume", 3, 0), ("poll", 0.2)]
    # The first record that comes ends the wait; those fetched with it come along.
    fake.calls.clear()
    fake.arriving = [message(0, 5), message(0, 6), message(0, 7)]
    assert [r.offset for r in consumer.poll(200)[TP0]] == [5, 6, 7]
    assert fake.calls == [("consume", 3, 0), ("poll", 0.2), ("consume", 2, 0)]


def test_an_error_in_place_of_a_record_is_logged_once_and_skipped(caplog) -> None:
    consumer, fake, _ = make()
    unknown = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Subscribed topic not available")
    fake.queue = [
        Message(topic="t", error=unknown),
        message(0, 1),
        Message(topic="t", error=unknown),
        Message(error=KafkaError(KafkaError._PARTITION_EOF)),
    ]
    with caplog.at_level("DEBUG", logger="livelearn.confluent"):
        batches = consumer.poll(0)
    assert [r.offset for r in batches[TP0]] == [1]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Subscribed topic not available" in warnings[0].getMessage()


def test_a_fatal_error_makes_poll_raise_for_the_worker_to_replace_the_consumer() -> None:
    consumer, fake, _ = make()
    fake.queue = [Message(error=KafkaError(KafkaError._FENCED, "fenced", fatal=True))]
    with pytest.raises(ServiceUnavailable, match="fatal"):
        consumer.poll(0)
    consumer, fake, _ = make()
    fake.config["error_cb"](KafkaError(KafkaError._FATAL, "idempotence", fatal=True))
    with pytest.raises(ServiceUnavailable, match="idempotence"):
        consumer.poll(0)


def test_a_failing_consume_is_a_kafka_outage() -> None:
    consumer, fake, _ = make()
    fake.fail["consume"] = KafkaException(KafkaError(KafkaError._TRANSPORT))
    with pytest.raises(ServiceUnavailable):
        consumer.poll(0)


# -- rebalances, seeks and pauses -------------------------------------------------------


def test_an_assignment_starts_from_the_first_offset_before_the_worker_hears_of_it() -> None:
    consumer, fake, listener = make()
    fake.calls.clear()
    assign(fake, 0, 1)
    # Assigned at an explicit offset, librdkafka looks up no committed offset whose answer
    # could undo the worker's seek; the worker's listener then pauses the partitions.
    assert fake.calls == [
        ("assign", [("t", 0, OFFSET_BEGINNING), ("t", 1, OFFSET_BEGINNING)]),
        ("pause", [("t", 0), ("t", 1)]),
    ]
    assert listener.events == [("assigned", [TP0, TP1])]
    assert consumer.status().assigned == 2


@pytest.mark.parametrize("lost", [False, True], ids=["revoked", "lost"])
def test_a_revocation_reaches_the_worker_before_the_partitions_are_let_go(lost) -> None:
    consumer, fake, listener = make()
    assign(fake, 0, 1)
    fake.calls.clear()
    revoke(fake, 0, 1, lost=lost)
    assert listener.events[-1] == ("revoked", [TP0, TP1])
    assert fake.calls == [("unassign",)]
    assert consumer.status().assigned == 0


COOPERATIVE = {"partition.assignment.strategy": "cooperative-sticky"}


def test_a_cooperative_rebalance_adds_and_takes_only_the_partitions_that_move() -> None:
    consumer, fake, listener = make(**COOPERATIVE)
    assign(fake, 0, 1)
    fake.calls.clear()
    revoke(fake, 1)  # partition 1 moves to another member; 0 stays, not stopped
    assign(fake)  # the end of the rebalance: nothing new here
    assert fake.calls == [("incremental_unassign", [("t", 1)]), ("incremental_assign", [])]
    assert listener.events[1:] == [("revoked", [TP1]), ("assigned", [])]
    assert consumer.status().assigned == 1
    fake.queue = [message(0, 4)]
    assert list(consumer.poll(0)) == [TP0]  # still fetched
    fake.calls.clear()
    assign(fake, 2)
    assert fake.calls == [
        ("incremental_assign", [("t", 2, OFFSET_BEGINNING)]),
        ("pause", [("t", 2)]),
    ]
    assert consumer.status().assigned == 2


def test_partitions_lost_with_a_cooperative_membership_are_let_go_one_by_one() -> None:
    consumer, fake, listener = make(**COOPERATIVE)
    assign(fake, 0, 1)
    fake.calls.clear()
    revoke(fake, 0, 1, lost=True)
    assert listener.events[-1] == ("revoked", [TP0, TP1])
    assert fake.calls == [("incremental_unassign", [("t", 0), ("t", 1)])]
    assert consumer.status().assigned == 0


def test_a_seek_while_paused_is_made_right_after_the_resume() -> None:
    consumer, fake, _ = make()
    assign(fake, 0, 1)
    fake.calls.clear()
    consumer.seek(TP0, 300)  # paused by the listener: made when resumed
    assert fake.calls == []
    consumer.resume(TP0)
    assert fake.calls == [("resume", [("t", 0)]), ("seek", ("t", 0, 300))]


def test_a_partition_resumed_without_a_seek_is_sought_to_where_it_stands() -> None:
    consumer, fake, _ = make()
    assign(fake, 0, 1, 2)
    consumer.seek(TP0, 10)
    consumer.seek(TP1, 20)
    consumer.resume(TP0, TP1, TopicPartition("t", 2))
    fake.queue = [message(0, 10), message(0, 11)]
    consumer.poll(0)
    consumer.pause(TP0, TP1, TopicPartition("t", 2))
    fake.calls.clear()
    consumer.resume(TP0, TP1, TopicPartition("t", 2))
    # After the last record returned, where it was sought; partition 2 never stood
    # anywhere: librdkafka resumes it where it is.
    assert fake.calls == [
        ("resume", [("t", 0), ("t", 1), ("t", 2)]),
        ("seek", ("t", 0, 12)),
        ("seek", ("t", 1, 20)),
    ]


def test_a_seek_of_a_running_partition_is_made_at_once() -> None:
    consumer, fake, _ = make()
    assign(fake, 0)
    consumer.resume(TP0)
    fake.calls.clear()
    consumer.seek(TP0, 12)
    assert fake.calls == [("seek", ("t", 0, 12))]


def test_a_revocation_drops_the_seeks_still_waiting() -> None:
    consumer, fake, _ = make()
    assign(fake, 0)
    consumer.seek(TP0, 300)
    revoke(fake, 0)
    assign(fake, 0)
    fake.calls.clear()
    consumer.resume(TP0)
    assert ("seek", ("t", 0, 300)) not in fake.calls


def test_a_seek_of_a_partition_not_assigned_raises_as_kafka_python_does() -> None:
    consumer, _, _ = make()
    with pytest.raises(KafkaPythonError, match="not assigned"):
        consumer.seek(TP0, 1)


# -- offsets ----------------------------------------------------------------------------


def test_offset_lookups_answer_in_kafka_pythons_terms() -> None:
    consumer, fake, _ = make()
    fake.watermarks[("t", 0)] = (3, 90)
    assert consumer.beginning_offsets([TP0]) == {TP0: 3}
    assert consumer.end_offsets([TP0]) == {TP0: 90}
    assert ("get_watermark_offsets", False) in fake.calls  # asked of Kafka, not the cache
    found = consumer.offsets_for_times({TP0: 1_700_000_000_000, TP1: 10**13})
    assert found[TP0] is not None and found[TP0].offset == 42
    assert found[TP1] is None  # no record at or after that time


def test_a_failed_lookup_raises_kafka_pythons_error_for_the_worker_to_retry() -> None:
    consumer, fake, _ = make()
    fake.watermarks[("t", 0)] = None  # confluent-kafka's answer on a timeout
    with pytest.raises(KafkaTimeoutError):
        consumer.end_offsets([TP0])
    fake.fail["get_watermark_offsets"] = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    with pytest.raises(KafkaTimeoutError):
        consumer.beginning_offsets([TP0])
    fake.fail["offsets_for_times"] = KafkaException(KafkaError(KafkaError._TRANSPORT))
    with pytest.raises(KafkaPythonError):
        consumer.offsets_for_times({TP0: 1})


def test_highwater_is_read_from_the_last_fetch_without_a_request() -> None:
    consumer, fake, _ = make()
    assert consumer.highwater(TP0) is None
    fake.watermarks[("t", 0)] = (-1001, -1001)  # never fetched
    assert consumer.highwater(TP0) is None
    fake.watermarks[("t", 0)] = (0, 77)
    assert consumer.highwater(TP0) == 77
    assert fake.calls[-1] == ("get_watermark_offsets", True)


def test_commits_are_asynchronous_and_an_empty_one_is_not_sent() -> None:
    consumer, fake, _ = make()
    fake.calls.clear()
    consumer.commit({})
    consumer.commit({TP0: OffsetAndMetadata(10, "", -1)})
    consumer.commit_async({TP1: OffsetAndMetadata(4, "", -1)}, callback=lambda o, r: None)
    assert fake.calls == [("commit", [("t", 0, 10)], True), ("commit", [("t", 1, 4)], True)]


# -- status and close -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        (
            {
                "brokers": {
                    "k:9092/1": {"state": "UP", "rxidle": 2_000_000},
                    "GroupCoordinator": {"state": "UP", "rxidle": 500_000},
                },
                "cgrp": {"state": "up", "join_state": "steady"},
            },
            (True, 99.5, True),
        ),
        (
            {
                "brokers": {"k:9092/1": {"state": "UP", "rxidle": 100_000}},
                "cgrp": {"state": "up", "join_state": "wait-sync"},
            },
            (True, 99.9, False),
        ),
        (
            {"brokers": {"k:9092/1": {"state": "TRY_CONNECT", "rxidle": 30_000_000}}},
            (False, 70.0, False),
        ),
        ({}, (False, None, False)),
    ],
    ids=["stable", "joining", "reconnecting", "empty"],
)
def test_statistics_say_what_kafka_watch_needs(stats, expected) -> None:
    assert read_stats(stats, 100.0) == pytest.approx(expected)


def test_the_status_follows_statistics_errors_and_records() -> None:
    consumer, fake, _ = make()
    status = consumer.status()
    assert (status.connected, status.answered_at, status.joined) == (False, None, False)
    report = (
        b'{"brokers": {"k/1": {"state": "UP", "rxidle": 0}},'
        b' "cgrp": {"state": "up", "join_state": "steady"}}'
    )
    fake.config["stats_cb"](report.decode())
    status = consumer.status()
    assert status.connected and status.joined
    assert status.answered_at is not None and status.at - status.answered_at < 1
    fake.config["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not consumer.status().connected
    before = consumer.status().answered_at
    fake.queue = [message(0, 1)]
    consumer.poll(0)
    after = consumer.status().answered_at
    assert before is not None and after is not None and after > before


def test_each_statistics_report_reaches_the_metrics_and_a_bad_one_is_skipped() -> None:
    reports: list[Any] = []
    fakes: list[FakeRdKafka] = []
    ConfluentConsumer(
        {"group.id": "g"},
        factory=lambda config: fakes.append(FakeRdKafka(config)) or fakes[0],  # type: ignore[arg-type,func-returns-value]
        on_stats=reports.append,
    )
    fakes[0].config["stats_cb"]('{"rxmsgs": 3}')
    fakes[0].config["stats_cb"]("not json")
    assert reports == [{"rxmsgs": 3}]


def test_close_is_bounded_and_the_worker_hears_nothing_more(caplog) -> None:
    consumer, fake, listener = make()
    assign(fake, 0)
    events = len(listener.events)
    fake.close_blocks.clear()  # a close that hangs, as with a broker that does not answer

    def close_revokes() -> None:  # librdkafka revokes the assignment as it closes
        revoke(fake, 0)

    fake.calls.clear()
    started = time.monotonic()
    threading.Timer(0.05, close_revokes).start()
    consumer.close(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 2
    assert "did not leave its group" in caplog.text
    time.sleep(0.1)
    assert len(listener.events) == events  # the worker had let go already
    fake.close_blocks.set()
    consumer.close()  # a second close does nothing
    assert fake.calls.count(("close",)) == 1
