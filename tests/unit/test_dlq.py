"""The dead-letter sink's confirmation, retries, size cuts and dedup keys, against a fake
producer (no network). tests/integration/test_dead_letters.py runs it on real Kafka."""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
)

from livelearn import ConfigError, DeadLetterError, LivelearnError
from livelearn.stream.dlq import KafkaDeadLetterSink, RetryPolicy, close_producer, read_headers

NO_WAIT = RetryPolicy(attempts=3, backoff_s=0)
MIB = 1024 * 1024


class FakeFuture:
    def __init__(self, error: Exception | None, done: bool = True) -> None:
        self.error = error
        self.is_done = done

    def get(self, timeout: float | None = None) -> Any:
        if not self.is_done:
            raise KafkaTimeoutError("still in flight")
        if self.error is not None:
            raise self.error
        return "metadata"


class FakeProducer:
    """Records every send; ``outcome(n, record)`` decides the n-th send's future."""

    def __init__(self, outcome: Callable[[int, dict[str, Any]], FakeFuture], **config: Any):
        self.config = config
        self.outcome = outcome
        self.sent: list[dict[str, Any]] = []
        self.flushes = 0
        self.closed = False

    def send(self, topic: str, value=None, key=None, headers=None) -> FakeFuture:
        record = {"topic": topic, "value": value, "key": key, "headers": list(headers or [])}
        self.sent.append(record)
        return self.outcome(len(self.sent), record)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _ok(n: int, record: dict[str, Any]) -> FakeFuture:
    return FakeFuture(None)


def _sink(
    outcome: Callable[[int, dict[str, Any]], FakeFuture] = _ok,
    retry: RetryPolicy = NO_WAIT,
    **kwargs: Any,
) -> tuple[KafkaDeadLetterSink, list[FakeProducer]]:
    producers: list[FakeProducer] = []

    def factory(**config: Any) -> FakeProducer:
        producers.append(FakeProducer(outcome, **config))
        return producers[-1]

    sink = KafkaDeadLetterSink(
        "kafka:9092", ".dlq", "w1", retry=retry, producer_factory=factory, **kwargs
    )
    return sink, producers


def _sent(producers: list[FakeProducer]) -> list[dict[str, Any]]:
    """Every record sent, in order: each failed attempt leaves its producer for a new one."""
    return [record for producer in producers for record in producer.sent]


def _send(sink: KafkaDeadLetterSink, offset: int, value: bytes = b"{", key: bytes | None = None):
    sink.send("t", value, key, reason="not_json", detail="bad json", source=("t", 0, offset))


def test_a_dead_letter_carries_its_reason_source_and_dedup_key() -> None:
    sink, producers = _sink()
    _send(sink, 7, key=b"k")
    sink.flush()
    (producer,) = producers
    (record,) = producer.sent
    assert record["topic"] == "t.dlq" and record["value"] == b"{" and record["key"] == b"k"
    assert read_headers(record["headers"]) == {
        "reason": "not_json",
        "detail": "bad json",
        "source.topic": "t",
        "source.partition": "0",
        "source.offset": "7",
        "dedup_key": "t/0/7/not_json",
    }
    assert producer.config["acks"] == "all"
    assert producer.config["max_request_size"] == MIB


def test_flush_confirms_every_future_and_then_has_nothing_queued() -> None:
    sink, producers = _sink()
    for offset in range(3):
        _send(sink, offset)
    sink.flush()
    sink.flush()  # nothing queued: no second producer flush
    assert len(producers[0].sent) == 3
    assert producers[0].flushes == 1


def test_a_failed_delivery_is_sent_again_and_then_confirmed() -> None:
    def outcome(n: int, record: dict[str, Any]) -> FakeFuture:
        return FakeFuture(NotEnoughReplicasError("isr shrank") if n == 2 else None)

    sink, producers = _sink(outcome)
    for offset in range(3):
        _send(sink, offset)
    sink.flush()
    offsets = [read_headers(r["headers"])["source.offset"] for r in _sent(producers)]
    assert offsets == ["0", "1", "2", "1"]
    assert len(producers) == 2 and producers[0].closed  # the retry went on a new producer


@pytest.mark.parametrize(
    "outcome",
    [
        lambda n, r: FakeFuture(NotEnoughReplicasError("isr shrank")),
        lambda n, r: FakeFuture(None, done=False),
    ],
    ids=["broker-error", "never-acknowledged"],
)
def test_a_dead_letter_failing_every_attempt_raises_naming_its_source(outcome: Any) -> None:
    def mixed(n: int, record: dict[str, Any]) -> FakeFuture:
        if read_headers(record["headers"])["source.offset"] == "5":
            return FakeFuture(None)
        return outcome(n, record)  # type: ignore[no-any-return]

    sink, producers = _sink(mixed)
    _send(sink, 4)
    _send(sink, 5)
    with pytest.raises(DeadLetterError) as caught:
        sink.flush()
    assert caught.value.sources == [("t", 0, 4)]
    assert "t/0@4" in str(caught.value)
    assert len(caught.value.causes) == 1
    sent = [read_headers(r["headers"])["source.offset"] for r in _sent(producers)]
    assert sent.count("4") == NO_WAIT.attempts and sent.count("5") == 1
    # One producer per attempt: one stuck on a dead leader is not tried again.
    assert len(producers) == NO_WAIT.attempts and all(p.closed for p in producers)
    # Kept: the next flush sends it again (and not the one delivered).
    with pytest.raises(DeadLetterError):
        sink.flush()
    sent = [read_headers(r["headers"])["source.offset"] for r in _sent(producers)]
    assert sent.count("4") == 2 * NO_WAIT.attempts and sent.count("5") == 1


def test_a_dead_letter_kept_after_a_failed_flush_is_delivered_by_a_later_one() -> None:
    broker_up = False

    def outcome(n: int, record: dict[str, Any]) -> FakeFuture:
        return FakeFuture(None if broker_up else NotEnoughReplicasError("isr shrank"))

    sink, producers = _sink(outcome)
    _send(sink, 4)
    with pytest.raises(DeadLetterError):
        sink.flush()
    broker_up = True
    _send(sink, 4)  # read again (a transaction aborted): queued once, by its dedup key
    sink.flush()
    sent = _sent(producers)
    assert sent[-1]["headers"] == sent[0]["headers"]
    sink.flush()  # delivered: nothing is queued any more
    assert len(_sent(producers)) == NO_WAIT.attempts + 1


class SlowFuture(FakeFuture):
    """Never acknowledged: ``get`` waits out its timeout, as kafka-python's does."""

    def __init__(self, waits: list[float]) -> None:
        super().__init__(None, done=False)
        self.waits = waits

    def get(self, timeout: float | None = None) -> Any:
        assert timeout is not None
        self.waits.append(timeout)
        time.sleep(timeout)
        raise KafkaTimeoutError("still in flight")


def test_one_attempt_waits_timeout_s_for_all_its_letters_together() -> None:
    waits: list[float] = []
    sink, _ = _sink(
        lambda n, r: SlowFuture(waits), retry=RetryPolicy(attempts=1, backoff_s=0), timeout_s=0.2
    )
    for offset in range(4):
        _send(sink, offset)
    with pytest.raises(DeadLetterError) as caught:
        sink.flush()
    assert len(caught.value.sources) == 4
    # One deadline for the attempt, not one per letter (or per batch, as kafka-python's
    # flush waits): the first letter waits it out, the others find it passed.
    assert len(waits) == 4 and sum(waits) <= 0.21, waits


def test_a_producer_that_cannot_be_built_fails_flush_not_send() -> None:
    attempts = []

    def factory(**config: Any) -> FakeProducer:
        attempts.append(config)
        raise KafkaTimeoutError("Unable to bootstrap from kafka:9092")

    sink = KafkaDeadLetterSink("kafka:9092", ".dlq", "w1", retry=NO_WAIT, producer_factory=factory)
    _send(sink, 1)
    _send(sink, 2)  # does not try again: the worker loop is not blocked once per event
    assert len(attempts) == 1
    with pytest.raises(DeadLetterError) as caught:
        sink.flush()
    assert caught.value.sources == [("t", 0, 1), ("t", 0, 2)]
    assert all("Unable to bootstrap" in cause for cause in caught.value.causes)
    assert len(attempts) == NO_WAIT.attempts  # once per attempt, not once per dead letter


def test_a_send_that_raises_is_retried_by_flush() -> None:
    calls = []

    def factory(**config: Any) -> FakeProducer:
        producer = FakeProducer(_ok, **config)
        original = producer.send

        def send(*args: Any, **kwargs: Any) -> FakeFuture:
            calls.append(1)
            if len(calls) == 1:
                raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")
            return original(*args, **kwargs)

        producer.send = send  # type: ignore[method-assign]
        return producer

    sink = KafkaDeadLetterSink("kafka:9092", ".dlq", "w1", retry=NO_WAIT, producer_factory=factory)
    _send(sink, 1)
    sink.flush()
    assert len(calls) == 2


def test_flush_waits_between_attempts_as_the_policy_says(monkeypatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("livelearn.stream.dlq.time.sleep", waits.append)
    sink, _ = _sink(lambda n, r: FakeFuture(NotEnoughReplicasError("no")), retry=RetryPolicy())
    _send(sink, 1)
    with pytest.raises(DeadLetterError):
        sink.flush()
    assert waits == [0.25, 0.5, 1.0, 2.0]


# -- size --------------------------------------------------------------------------------


def test_a_dead_letter_too_large_is_sent_with_its_value_cut() -> None:
    sink, producers = _sink(max_request_size=MIB)
    value = b"x" * (5 * MIB)
    _send(sink, 3, value=value, key=b"k")
    sink.flush()
    (record,) = producers[0].sent
    assert record["value"] == b"" and record["key"] == b"k"
    headers = read_headers(record["headers"])
    assert headers["value_cut"] == "true"
    assert headers["value_bytes"] == str(len(value))
    assert headers["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert headers["dedup_key"] == "t/0/3/not_json" and "key_cut" not in headers


def test_a_dead_letter_just_within_the_limit_is_sent_whole() -> None:
    sink, producers = _sink(max_request_size=MIB)
    value = b"x" * (MIB - 16 * 1024)
    _send(sink, 3, value=value)
    sink.flush()
    assert producers[0].sent[0]["value"] == value


def test_a_key_too_large_is_cut_as_well() -> None:
    sink, producers = _sink(max_request_size=MIB)
    key = b"k" * (2 * MIB)
    _send(sink, 3, value=b"v" * MIB, key=key)
    sink.flush()
    (record,) = producers[0].sent
    assert record["value"] == b"" and record["key"] is None
    headers = read_headers(record["headers"])
    assert headers["value_cut"] == headers["key_cut"] == "true"
    assert headers["key_sha256"] == hashlib.sha256(key).hexdigest()


def test_a_dead_letter_the_broker_refuses_as_too_large_is_sent_again_cut() -> None:
    def outcome(n: int, record: dict[str, Any]) -> FakeFuture:
        too_large = len(record["value"]) > 1000  # the topic's max.message.bytes is smaller
        return FakeFuture(MessageSizeTooLargeError("topic limit") if too_large else None)

    sink, producers = _sink(outcome)
    _send(sink, 3, value=b"x" * 5000)
    sink.flush()
    first, second = _sent(producers)
    assert len(first["value"]) == 5000 and second["value"] == b""
    assert read_headers(second["headers"])["value_bytes"] == "5000"


def test_a_null_value_and_an_undecodable_detail_do_not_fail_the_send() -> None:
    sink, producers = _sink()
    sink.send("t", None, None, reason="bad_utf8", detail="id \udcff", source=("t", 1, 2))
    sink.flush()
    (record,) = producers[0].sent
    assert record["value"] == b""
    assert read_headers(record["headers"])["detail"] == "id \\udcff"


# -- configuration and the error ---------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy(attempts=0),
        lambda: RetryPolicy(backoff_s=-1),
        lambda: _sink(max_request_size=1000),
        lambda: _sink(timeout_s=0),
    ],
    ids=["no-attempt", "negative-backoff", "tiny-request-size", "no-timeout"],
)
def test_settings_that_cannot_work_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError):
        make()


def test_the_error_carries_its_sources_and_survives_pickling() -> None:
    error = DeadLetterError([("t", 0, 4), ("u", 2, 9)], ["A: a", "B: b"])
    assert isinstance(error, LivelearnError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.sources == [("t", 0, 4), ("u", 2, 9)] and copy.causes == ["A: a", "B: b"]
    assert str(copy) == str(error)
    assert "t/0@4: A: a" in str(error) and "u/2@9: B: b" in str(error)


def test_close_flushes_then_closes_the_producer_even_when_delivery_fails() -> None:
    sink, producers = _sink(lambda n, r: FakeFuture(NotEnoughReplicasError("no")))
    _send(sink, 1)
    with pytest.raises(DeadLetterError):
        sink.close()
    assert producers[0].closed


class StuckSender:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def force_close(self) -> None:
        self.calls.append("force_close")

    def join(self, timeout: float | None = None) -> None:
        self.calls.append("join")


class UnflushableProducer(FakeProducer):
    """kafka-python's close with a broker down: its flush times out, and close raises
    before it stops the I/O thread; once that is stopped, nothing is pending."""

    def __init__(self) -> None:
        super().__init__(_ok)
        self._sender = StuckSender()
        self.closes: list[float | None] = []

    def close(self, timeout: float | None = None) -> None:
        self.closes.append(timeout)
        if "force_close" not in self._sender.calls:
            raise KafkaTimeoutError("Timeout waiting for future")
        super().close(timeout)


def test_a_producer_that_cannot_flush_is_closed_with_its_thread_stopped() -> None:
    producer = UnflushableProducer()
    close_producer(producer, 10)
    assert producer._sender.calls == ["force_close", "join"]
    assert producer.closes == [10, 0] and producer.closed


def test_the_sink_closes_its_producer_even_when_the_broker_is_gone() -> None:
    made: list[UnflushableProducer] = []

    def factory(**config: Any) -> UnflushableProducer:
        made.append(UnflushableProducer())
        return made[-1]

    sink = KafkaDeadLetterSink("kafka:9092", ".dlq", "w1", retry=NO_WAIT, producer_factory=factory)
    _send(sink, 1)
    sink.flush()
    sink.close()
    assert made[0].closed and made[0]._sender.calls == ["force_close", "join"]
