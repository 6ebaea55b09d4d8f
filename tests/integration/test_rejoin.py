"""Joining the group again, on a real broker: a worker started right after another one in
the same group (``make run`` twice) learns at once, and a join kafka-python began and lost
track of is finished (issue 16, item 5).

Before the fix, a consumer loaded the topics' metadata before subscribing: the group's
leader assigned the partition with an empty metadata snapshot, saw the partition "appear"
at the next metadata refresh, revoked it about 100 ms after the first assignment and
joined again. When that second join outlasted the poll that began it (the fetch process
waits for the worker to answer the revocation), kafka-python 3 never finished it: the
consumer stayed out of its group until the watchdog replaced it (``outage.stall_timeout_s``,
30 s by default).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterable
from typing import Any

import pytest
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.admin import NewPartitions

from livelearn.stream.fetcher import LocalConsumer
from tests.integration.conftest import (
    WorkerHandle,
    each_client,
    encode,
    phishing_events,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

# The bound of the issue: a worker learns within this long of subscribing.
LEARNS_WITHIN_S = 5.0


def _learned(worker: WorkerHandle, model: str) -> int:
    """Events this worker process has learned, from its /metrics."""
    sample = re.search(
        rf'^livelearn_events_total{{model="{re.escape(model)}",outcome="learned"}} (\S+)$',
        worker.metrics(),
        re.MULTILINE,
    )
    return 0 if sample is None else int(float(sample.group(1)))


def _time_to_learn(worker: WorkerHandle, model: str, events: int) -> float:
    """Seconds from the worker's subscription to its learning ``events`` events."""
    wait_for(lambda: "worker subscribed" in worker.log(), 60, "the worker to subscribe")
    subscribed = time.monotonic()
    wait_for(
        lambda: _learned(worker, model) == events,
        LEARNS_WITHIN_S,
        f"the worker to learn {events} events",
        context=worker.tail,
    )
    return time.monotonic() - subscribed


def _rebalances(worker: WorkerHandle) -> list[tuple[str, list[str]]]:
    """The worker's rebalance callbacks so far: ("assigned" or "revoked", partitions)."""
    out = []
    for line in worker.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("message", "")
        if message in ("partitions assigned", "partitions revoked"):
            out.append((message.split()[1], record["partitions"]))
    return out


@each_client
def test_runs_in_a_row_in_one_group_learn_at_once(make_topic, deploy, client) -> None:
    # Each client as `make run` starts it (kafka-python with its fetch process); the
    # in-process consumer's first join is checked below, without three worker start-ups.
    topic = make_topic(partitions=1)
    dep = deploy(topic, settings={"kafka": {"client": client}})
    events = phishing_events(n=300)
    produce(dep.bootstrap, topic, encode(events[:100]))
    first = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 100, 60, "the first run to learn", context=first.tail)
    first.proc.send_signal(signal.SIGINT)  # Ctrl-C, as `make run` is stopped
    assert first.proc.wait(timeout=30) == 0, first.tail()

    for run, stop in ((2, signal.SIGTERM), (3, signal.SIGINT)):
        new = events[(run - 1) * 100 : run * 100]
        produce(dep.bootstrap, topic, encode(new))
        worker = dep.start_worker()
        took = _time_to_learn(worker, dep.model, len(new))
        assert took < LEARNS_WITHIN_S, (run, took)
        # The first assignment is the one it learns with: no revocation right after it
        # (kafka-python first revokes the nothing it holds).
        moved = [(kind, parts) for kind, parts in _rebalances(worker) if parts]
        assert moved == [("assigned", [f"{topic}/0"])], (run, worker.tail())
        worker.proc.send_signal(stop)
        assert worker.proc.wait(timeout=30) == 0, worker.tail()
    assert dep.next_offset() == 300
    assert dep.stats()["events_learned"] == 300


class _SlowRevocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records the callbacks; answers a revocation late, as a busy worker does."""

    def __init__(self, revoke_s: float) -> None:
        self.revoke_s = revoke_s
        self.calls: list[tuple[str, list[int]]] = []

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in revoked)
        self.calls.append(("revoked", partitions))
        if partitions:
            time.sleep(self.revoke_s)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.calls.append(("assigned", sorted(tp.partition for tp in assigned)))


def test_a_join_begun_by_a_poll_that_timed_out_is_finished(
    make_topic, kafka_admin, services: Any, unique_name: str
) -> None:
    topic = make_topic(partitions=1)
    consumer = LocalConsumer(
        bootstrap_servers=services.bootstrap_servers,
        group_id=f"g-{unique_name}",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        metadata_max_age_ms=1000,  # the leader sees the new partition within a second
    )
    poll_ms = 200
    # Longer than a poll: the poll that begins the rebalance returns before its join ends.
    listener = _SlowRevocations(revoke_s=2.5 * poll_ms / 1000)
    try:
        consumer.subscribe([topic], listener=listener)

        def member_with(partitions: int) -> bool:
            consumer.poll(timeout_ms=poll_ms)
            time.sleep(0.1)  # the worker's own work between two polls
            status = consumer.status()
            return status.joined and status.assigned == partitions

        wait_for(lambda: member_with(1), 15, "the first assignment", every=0)
        ends = time.monotonic() + 1.5  # a metadata refresh or more: no second rebalance
        while time.monotonic() < ends:
            member_with(1)
        assert listener.calls == [("revoked", []), ("assigned", [0])]

        # The leader rejoins for the new partition; the poll that begins that join returns
        # during the slow revocation. Without `finish_join` the consumer stays REBALANCING
        # (out of the group once the broker drops it) for good.
        kafka_admin.create_partitions({topic: NewPartitions(2)})
        wait_for(lambda: member_with(2), 8, "the assignment of both partitions", every=0)
        assert listener.calls[2:] == [("revoked", [0]), ("assigned", [0, 1])]
    finally:
        consumer.close()
