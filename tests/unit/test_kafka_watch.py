"""`KafkaWatch`: when Kafka counts as down, when a consumer counts as stalled, and when the
worker gives up (exit code 69), on a fake clock."""

from __future__ import annotations

import pytest

from livelearn.errors import ServiceUnavailable
from livelearn.settings import KafkaSettings, OutageSettings
from livelearn.stream.fetcher import KafkaStatus
from livelearn.stream.kafka_watch import KafkaWatch

STALL, TIMEOUT = 10.0, 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gauge:
    value = -1.0

    def set(self, value: float) -> None:
        self.value = value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gauge() -> Gauge:
    return Gauge()


@pytest.fixture
def watch(clock: Clock, gauge: Gauge) -> KafkaWatch:
    outage = OutageSettings(timeout_s=TIMEOUT, stall_timeout_s=STALL)
    return KafkaWatch(KafkaSettings(group_id="g"), outage, gauge, clock=clock)


def status(clock: Clock, *, connected: bool = True, joined: bool = True) -> KafkaStatus:
    """A fresh report: Kafka answered just now."""
    return KafkaStatus(clock.now, clock.now, connected, joined, 1)


def run(watch: KafkaWatch, clock: Clock, seconds: float, **kwargs: bool) -> list[str]:
    """Observe every second for ``seconds``; the reasons to recreate that came up."""
    reasons = []
    lagging, delivered = kwargs.pop("lagging", False), kwargs.pop("delivered", False)
    for _ in range(int(seconds)):
        clock.now += 1
        reason = watch.observe(status(clock, **kwargs), lagging=lagging, delivered=delivered)
        if reason is not None:
            reasons.append(reason)
            watch.recreated()
    return reasons


def test_a_stable_member_that_holds_no_partition_is_left_alone(watch, clock, gauge) -> None:
    # More members than partitions: joined, nothing assigned, nothing to read. No flapping.
    assert run(watch, clock, 10 * (STALL + TIMEOUT), joined=True) == []
    assert watch.up and gauge.value == 1 and watch.details() == {}


def test_a_group_that_does_not_settle_gets_a_new_consumer_then_exit_69(watch, clock) -> None:
    reasons = run(watch, clock, STALL + 2, joined=False)
    assert reasons == ["the consumer has not been a stable member of group 'g' for 11 s"]
    assert watch.up  # Kafka answers: this is not an outage
    with pytest.raises(ServiceUnavailable) as info:
        run(watch, clock, TIMEOUT + 2, joined=False)
    message = str(info.value)
    assert message.startswith("Kafka: the consumer has not been a stable member of group 'g'")
    assert "outage.timeout_s=30" in message and "outage.stall_timeout_s=10" in message


def test_a_group_that_settles_after_a_new_consumer_clears_the_stall(watch, clock) -> None:
    assert len(run(watch, clock, STALL + 2, joined=False)) == 1
    assert run(watch, clock, 2 * TIMEOUT, joined=True) == []
    assert "kafka_stall" not in watch.details()


def test_lag_with_no_records_is_a_stall_records_are_progress(watch, clock) -> None:
    assert run(watch, clock, STALL, lagging=True, delivered=True) == []
    reasons = run(watch, clock, STALL + 1, lagging=True)
    assert reasons == [
        "no records for 11 s although the assigned partitions have records not yet read"
    ]


def test_a_consumer_that_stops_reporting_is_replaced(watch, clock) -> None:
    watch.observe(status(clock), lagging=False, delivered=False)
    last = status(clock)
    clock.now += STALL + 1
    reason = watch.observe(last, lagging=False, delivered=False)
    assert reason == "the Kafka consumer has not reported for 11 s"
    clock.now = last.at + watch.answer_limit_s + 1  # and nothing is heard of Kafka either
    watch.observe(last, lagging=False, delivered=False)
    assert not watch.up


def test_no_broker_connection_is_an_outage_bounded_by_the_timeout(watch, clock, gauge) -> None:
    run(watch, clock, 1, connected=False)  # a connection being remade: not yet an outage
    assert watch.up and gauge.value == 1
    run(watch, clock, 2, connected=False)
    assert not watch.up and gauge.value == 0
    assert watch.details()["kafka_outage_s"] == 0
    run(watch, clock, 1)  # answers again: ridden out
    assert watch.up and gauge.value == 1
    with pytest.raises(ServiceUnavailable, match=r"^Kafka has not answered .* outage.timeout_s=30"):
        run(watch, clock, TIMEOUT + 4, connected=False)  # counted from 2 s without a connection
