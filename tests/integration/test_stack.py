"""The session's Kafka and Redis answer, and the local stack (`devtools.stack`) behaves."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from livelearn.devtools import stack
from tests.integration.conftest import free_port, free_port_run

if TYPE_CHECKING:
    from tests.conftest import Services


def test_kafka_round_trip(
    services: Services, make_topic: Callable[..., str], unique_name: str
) -> None:
    topic = make_topic(partitions=2)
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(5)}
    producer = KafkaProducer(bootstrap_servers=services.bootstrap_servers)
    try:
        for key, value in sent.items():
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=services.bootstrap_servers,
        group_id=unique_name,
        auto_offset_reset="earliest",
    )
    received: dict[bytes, bytes] = {}
    try:
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.update((record.key, record.value) for record in records)
    finally:
        consumer.close()
    assert received == sent


def test_redis_set_get(redis_client: redis.Redis, unique_name: str) -> None:
    assert redis_client.set(unique_name, b"value", ex=60)
    assert redis_client.get(unique_name) == b"value"


@pytest.fixture(scope="module")
def running_stack(
    services: Services, stack_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[stack.StackInfo, Path]]:
    """A running local stack and its state folder: the session's own when the services come
    from it, else one started here on free ports (and stopped after the module)."""
    info = stack.status(stack_dir)
    if services.source == "stack" and info is not None:
        yield info, stack_dir
        return
    state_dir = tmp_path_factory.mktemp("stack")
    port = free_port_run(2)
    try:
        yield stack.up(state_dir, kafka_port=port, redis_port=free_port()), state_dir
    finally:
        stack.down(state_dir)


def test_status_gives_env_lines(running_stack: tuple[stack.StackInfo, Path]) -> None:
    info, state_dir = running_stack
    assert stack.status(state_dir) == info
    assert info.env_lines() == [
        f"LIVELEARN_KAFKA__BOOTSTRAP_SERVERS={info.bootstrap_servers}",
        f"LIVELEARN_REDIS__URL={info.redis_url}",
    ]
    assert info.kafka_pid is not None
    assert info.redis_pid is not None
    client = redis.Redis.from_url(info.redis_url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_second_up_returns_the_same_processes(
    running_stack: tuple[stack.StackInfo, Path],
) -> None:
    info, state_dir = running_stack
    kafka_port = int(info.bootstrap_servers.rpartition(":")[2])
    redis_port = int(info.redis_url.rpartition(":")[2].partition("/")[0])
    again = stack.up(state_dir, kafka_port=kafka_port, redis_port=redis_port)
    assert again == info  # the same PIDs: nothing was started again


def test_status_and_down_of_an_empty_state_dir(tmp_path: Path) -> None:
    assert stack.status(tmp_path) is None
    assert stack.down(tmp_path) == []
    assert stack.down(tmp_path / "missing") == []


@pytest.mark.parametrize("service", ["kafka_port", "redis_port"], ids=["kafka", "redis"])
def test_up_refuses_a_port_taken_by_another_process(tmp_path: Path, service: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port, free_port = taken.getsockname()[1], free_port_run(2)
        # Kafka takes free_port and free_port + 1 (its controller); Redis the same number,
        # which up() never reaches: the taken port is refused first.
        ports = {"kafka_port": free_port, "redis_port": free_port}
        ports[service] = taken_port
        with pytest.raises(stack.StackError, match=rf"port {taken_port} .*{service}"):
            stack.up(tmp_path, **ports)
    assert stack.status(tmp_path) is None
