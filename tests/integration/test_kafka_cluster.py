"""livelearn on a replicated Kafka cluster: three KRaft brokers of this module's own
(devtools/kafka_cluster.py), the checkpoints in the session's Redis.

The topics livelearn creates are replicated three times with two copies in sync, and the
worker learns every event exactly once, with no dead letter lost, while the leader of a
partition is killed mid-stream and then a second broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from livelearn.devtools.kafka_cluster import KafkaCluster
from livelearn.settings import TopicSettings, server_list
from livelearn.stream.app import ensure_topics
from livelearn.stream.dlq import read_headers
from tests.integration.conftest import (
    encode,
    free_port_run,
    phishing_events,
    produce,
    read_all,
    wait_for,
)
from tests.integration.test_worker import assert_learned_as_rivers_loop

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BAD = b'{"id": "bad", "features": "not an object"}'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    kafka = KafkaCluster(
        tmp_path_factory.mktemp("kafka-cluster"),
        free_port_run(6),
        brokers=3,
        jars_from=REPO / ".stack",
    )
    try:
        kafka.up()
        yield kafka
    finally:
        kafka.down()


@pytest.fixture(autouse=True)
def every_broker_back(cluster: KafkaCluster) -> Iterator[None]:
    """Each test starts on the whole cluster, even after one failed with a broker down."""
    yield
    down = [node for node in cluster.nodes if node not in cluster.running()]
    for node in down:
        cluster.start(node)
    if down:
        cluster.wait_in_sync()


def _describe(bootstrap: str, topic: str) -> tuple[list[int], dict[str, str]]:
    """Each partition's replica count, and the topic's configs."""
    admin = KafkaAdminClient(bootstrap_servers=server_list(bootstrap))
    try:
        (described,) = admin.describe_topics([topic])
        replicas = [len(p["replica_nodes"]) for p in described["partitions"]]
        response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        configs = {name: str(c["value"]) for name, c in response["topic"][topic].items()}
    finally:
        admin.close()
    return replicas, configs


def test_topics_it_creates_are_replicated_and_kept(cluster: KafkaCluster, unique_name: str) -> None:
    bootstrap = cluster.bootstrap_servers
    ensure_topics(bootstrap, {unique_name: 2}, TopicSettings())
    ensure_topics(bootstrap, {f"{unique_name}.dlq": 1}, TopicSettings(), dead_letters=True)
    replicas, configs = _describe(bootstrap, unique_name)
    assert replicas == [3, 3]
    assert configs["min.insync.replicas"] == "2"
    replicas, configs = _describe(bootstrap, f"{unique_name}.dlq")
    assert replicas == [3]
    assert configs["min.insync.replicas"] == "2"
    assert configs["retention.ms"] == str(30 * 86_400_000)


def _other_than(cluster: KafkaCluster, node: int) -> int:
    return next(n for n in cluster.nodes if n != node)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_leader_killed_then_a_second_broker_every_event_learned_once_no_dead_letter_lost(
    cluster: KafkaCluster, deploy: Any, unique_name: str, client: str
) -> None:
    bootstrap = cluster.bootstrap_servers
    topic = f"{unique_name}-{client}"
    ensure_topics(bootstrap, {topic: 2}, TopicSettings())
    dep = deploy(
        topic,
        settings={
            "kafka": {"client": client},
            "outage": {"stall_timeout_s": 5, "timeout_s": 120, "retry_max_s": 1},
        },
        checkpoint={"every_events": 37, "every_seconds": 0.3},
    )
    dep.env["LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    dep.bootstrap = bootstrap
    # Record i goes to partition i % 2; every 25th is a dead letter.
    events = phishing_events(n=1600)
    values: list[bytes | None] = [
        BAD if i % 25 == 24 else value for i, value in enumerate(encode(events))
    ]
    quarter = len(values) // 4
    produce(bootstrap, topic, values[:quarter], partitions=2)
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset(0) >= 100, 120, "100 events learned", context=worker.tail)

    first = cluster.leader(topic, 0)
    cluster.kill(first)  # mid-stream: the worker is fetching from it
    produce(bootstrap, topic, values[quarter : 2 * quarter], partitions=2, rate=400)
    wait_for(
        lambda: dep.next_offset(0) >= quarter,
        120,
        "the events after the leader's death learned",
        context=worker.tail,
    )
    cluster.start(first)
    cluster.wait_in_sync()  # back in every partition's replicas before another broker goes

    second = cluster.leader(topic, 1)
    if second == first:
        second = _other_than(cluster, first)
    cluster.kill(second)
    produce(bootstrap, topic, values[2 * quarter :], partitions=2, rate=400)
    cluster.start(second)
    per_partition = len(values) // 2
    wait_for(
        lambda: dep.next_offset(0) == per_partition and dep.next_offset(1) == per_partition,
        180,
        "every event learned",
        context=worker.tail,
    )
    assert worker.terminate() == 0, worker.tail()

    for partition in (0, 1):
        learned = [e for i, e in enumerate(events) if i % 2 == partition and values[i] != BAD]
        assert_learned_as_rivers_loop(dep.learner(partition), learned)
    letters = read_all(bootstrap, f"{topic}.dlq", timeout=30)
    sources = {
        (int(h["source.partition"]), int(h["source.offset"]))
        for h in (read_headers(r.headers) for r in letters)
    }
    expected = {(i % 2, i // 2) for i, value in enumerate(values) if value == BAD}
    assert sources == expected, f"lost: {sorted(expected - sources)}"
    print(
        f"{client}: killed node {first}, then node {second}; {len(expected)} records "
        f"dead-lettered, in {len(letters)} dead letters (a retried send may repeat one)"
    )
