"""Cooperative rebalancing (``kafka.assignment: cooperative``, librdkafka's
cooperative-sticky assignor) on a real broker: a third worker joins two that share a
topic's partitions while events stream in. Only the partitions that move to the newcomer
are revoked; those that stay are never stopped (not revoked, not claimed again: their
fencing epochs do not change), and every shard still equals River's loop over its
partition's events. The same run with eager assignors is the control: there, every
partition is revoked and claimed again."""

from __future__ import annotations

import json
import threading

import pytest

from tests.integration.conftest import (
    Deployment,
    WorkerHandle,
    encode,
    phishing_events,
    produce,
    wait_for,
)
from tests.integration.test_rejoin import _rebalances
from tests.integration.test_worker import assert_learned_as_rivers_loop

pytestmark = pytest.mark.integration

PARTITIONS = 6
# The phishing data set holds 1250 rows.
EVENTS = 1200


def _claims(worker: WorkerHandle) -> dict[int, set[int]]:
    """The epochs at which the worker claimed each partition's shard, from its log."""
    claims: dict[int, set[int]] = {}
    for line in worker.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") in ("shard started fresh", "shard restored", "shard kept"):
            partition = int(record["shard"].rsplit("/", 1)[1])
            claims.setdefault(partition, set()).add(int(record["epoch"]))
    return claims


def _owners(dep: Deployment, workers: list[WorkerHandle]) -> tuple[list[int], list[int | None]]:
    """Each partition's current fencing epoch, and which of ``workers`` holds it: the one
    that claimed it at that epoch (None: no one yet)."""
    epochs = [e or 0 for e in dep.store.epochs([dep.shard(p) for p in range(PARTITIONS)])]
    claims = [_claims(w) for w in workers]
    owners: list[int | None] = [
        next((i for i, c in enumerate(claims) if epochs[p] in c.get(p, ())), None)
        for p in range(PARTITIONS)
    ]
    return epochs, owners


def _kafka_metrics(worker: WorkerHandle) -> list[str]:
    return [line for line in worker.metrics().splitlines() if line.startswith("livelearn_kafka_")]


def _queues(lines: list[str], topic: str) -> list[str]:
    """The fetch-queue series of ``topic``'s partitions."""
    prefix = "livelearn_kafka_fetch_queue_events{"
    return [line for line in lines if line.startswith(prefix) and f'topic="{topic}"' in line]


def _share(dep: Deployment, workers: list[WorkerHandle]) -> bool:
    """Whether every partition has an owner among ``workers`` and each holds some."""
    owners = _owners(dep, workers)[1]
    return None not in owners and set(owners) == set(range(len(workers)))


@pytest.mark.parametrize("assignment", ["cooperative", "eager"])
def test_a_worker_joining_takes_partitions_without_stopping_those_that_stay(
    make_topic, deploy, assignment
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    dep = deploy(
        topic,
        settings={"kafka": {"client": "confluent", "assignment": assignment}},
        checkpoint={"every_events": 50, "every_seconds": 0.5},
    )
    events = phishing_events(n=EVENTS)
    # About 20 s of traffic, from once two workers share the partitions: the third joins
    # while every partition has events coming.
    sender = threading.Thread(
        target=produce,
        args=(dep.bootstrap, topic, encode(events)),
        kwargs={"partitions": PARTITIONS, "rate": 60},
    )
    first, second = dep.start_worker(), dep.start_worker()
    wait_for(
        lambda: _share(dep, [first, second]),
        90,
        "two workers to share every partition",
        context=first.tail,
    )
    sender.start()
    wait_for(
        lambda: all(dep.next_offset(p) > 0 for p in range(PARTITIONS)),
        60,
        "every partition to be learned from",
        context=second.tail,
    )
    seen = [len(_rebalances(w)) for w in (first, second)]
    epochs, owners = _owners(dep, [first, second])
    offsets = [dep.next_offset(p) for p in range(PARTITIONS)]

    third = dep.start_worker()
    workers = [first, second, third]
    wait_for(
        lambda: _share(dep, workers),
        90,
        "three workers to share every partition",
        context=third.tail,
    )
    sender.join(timeout=60)
    per_partition = EVENTS // PARTITIONS
    dep.wait_for_offsets(per_partition, PARTITIONS, 120, third)
    after, owners_after = _owners(dep, workers)
    # librdkafka's statistics, exported by the worker: a fetch queue for each partition it
    # holds (its labels bounded by its assignment), from a report up to a second old.
    held = owners_after.count(0)
    kafka = wait_for(
        lambda: (lines := _kafka_metrics(first)) and len(_queues(lines, topic)) == held and lines,
        30,
        f"the first worker's metrics to show its {held} partitions' fetch queues",
        context=lambda: "\n".join(_kafka_metrics(first)),
    )
    for worker in workers:
        assert worker.terminate() == 0, worker.tail()

    # The third worker joined while every partition still had events to come.
    assert all(offsets[p] < per_partition for p in range(PARTITIONS)), (offsets, third.tail())
    moved = {p for p in range(PARTITIONS) if owners_after[p] != owners[p]}
    revoked = {
        int(name.rsplit("/", 1)[1])
        for w, n in zip((first, second), seen, strict=True)
        for kind, names in _rebalances(w)[n:]
        if kind == "revoked"
        for name in names
    }
    assert moved and owners_after.count(2) > 0, (owners, owners_after)
    if assignment == "cooperative":
        # Only what changed owner was revoked. The rest stayed where it was and was never
        # stopped: its shards were not claimed again, so their epochs are those from
        # before the join.
        stayed = set(range(PARTITIONS)) - moved
        assert revoked == moved, (revoked, owners, owners_after)
        assert stayed and all(after[p] == epochs[p] for p in stayed), (stayed, epochs, after)
        assert all(after[p] != epochs[p] for p in moved), (moved, epochs, after)
    else:  # the control: an eager rebalance stops every partition and claims it again
        assert revoked == set(range(PARTITIONS)), (revoked, first.tail(), second.tail())
        assert all(after[p] != epochs[p] for p in range(PARTITIONS)), (epochs, after)

    # Exactly once: each shard equals River's loop over its partition's events.
    for p in range(PARTITIONS):
        assert_learned_as_rivers_loop(dep.learner(p), events[p::PARTITIONS])

    assert any(line.startswith("livelearn_kafka_rebalances_total ") for line in kafka), kafka
    assert any(line.startswith('livelearn_kafka_broker_up{broker="') for line in kafka), kafka
