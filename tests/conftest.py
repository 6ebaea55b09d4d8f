"""Shared fixtures: a real Kafka broker and a real Redis server for the whole session.

The services are picked in this order:

1. ``LIVELEARN_KAFKA__BOOTSTRAP_SERVERS`` and ``LIVELEARN_REDIS__URL`` name running servers;
2. testcontainers, where a Docker engine answers or can be started (`docker_engine`); the
   images are pulled, or built as stand-ins where no registry answers (`devtools.images`);
3. the local stack (`devtools.stack`), started in ``.stack`` and stopped at the end of the
   session unless it was already running before.

``LIVELEARN_TEST_REQUIRE_DOCKER=1`` (set by ``.ci/run``) turns a missing Docker engine
from a skipped compose test into a failure.

Tests under ``tests/integration/`` are marked ``integration``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaAdminClient

from livelearn.devtools import engine, images

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = REPO / ".stack"
KAFKA_IMAGE = "apache/kafka:4.1.1"
REDIS_IMAGE = "redis:7-alpine"
KAFKA_ENV = "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"
REDIS_ENV = "LIVELEARN_REDIS__URL"
REQUIRE_DOCKER_ENV = "LIVELEARN_TEST_REQUIRE_DOCKER"

# Ryuk, testcontainers' reaper, removes containers left by a crashed session; its image
# cannot be fetched without a registry, and the session's fixtures stop their containers.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@dataclass(frozen=True)
class Services:
    """Where the session's Kafka and Redis listen, and where they came from."""

    bootstrap_servers: str
    redis_url: str
    source: str  # "env", "testcontainers" or "stack"


@dataclass(frozen=True)
class DockerEngine:
    """The session's Docker engine: whether one answers, and why not."""

    available: bool
    problem: str = ""

    def require(self) -> None:
        """Skip the calling test without an engine, or fail it under ``.ci/run``."""
        if self.available:
            return
        message = f"no Docker engine: {self.problem}"
        if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    integration = REPO / "tests" / "integration"
    for item in items:
        if integration in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def docker_engine(stack_dir: Path) -> Iterator[DockerEngine]:
    """A Docker engine for the session: one that answers, or Debian's ``dockerd`` started
    here (installed first when root) and stopped when the session ends."""
    try:
        started = engine.up(stack_dir / "docker")
    except engine.EngineError as error:
        yield DockerEngine(False, str(error))
        return
    try:
        yield DockerEngine(True)
    finally:
        if started:
            engine.down(stack_dir / "docker")


@pytest.fixture(scope="session")
def services(docker_engine: DockerEngine) -> Iterator[Services]:
    """The session's Kafka and Redis: from the environment, testcontainers or the local stack."""
    kafka_env, redis_env = os.environ.get(KAFKA_ENV), os.environ.get(REDIS_ENV)
    if kafka_env and redis_env:
        yield Services(kafka_env, redis_env, "env")
    elif kafka_env or redis_env:
        pytest.fail(
            f"set both {KAFKA_ENV} and {REDIS_ENV}, or neither (to use testcontainers or the "
            f"local stack); only {KAFKA_ENV if kafka_env else REDIS_ENV} is set"
        )
    elif docker_engine.available:
        images.ensure([KAFKA_IMAGE, REDIS_IMAGE])
        with ExitStack() as stack:
            yield _start_containers(stack)
    else:
        from livelearn.devtools import stack

        was_running = stack.status(STACK_DIR)
        info = stack.up(STACK_DIR)
        try:
            yield Services(info.bootstrap_servers, info.redis_url, "stack")
        finally:
            if was_running is None or None in (was_running.kafka_pid, was_running.redis_pid):
                stack.down(STACK_DIR)


@pytest.fixture(scope="session")
def stack_dir() -> Path:
    """The local stack's state folder, ``.stack`` at the repository's root."""
    return STACK_DIR


@pytest.fixture
def redis_client(services: Services) -> Iterator[redis.Redis]:
    """A client of the session's Redis; name keys with `unique_name` to stay apart."""
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


@pytest.fixture
def unique_name() -> str:
    """A fresh short name such as ``t-1a2b3c4d`` for a topic, a model or a group."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def kafka_admin(services: Services) -> Iterator[KafkaAdminClient]:
    """An admin client of the session's Kafka."""
    admin = KafkaAdminClient(bootstrap_servers=services.bootstrap_servers)
    yield admin
    admin.close()


@pytest.fixture
def make_topic(kafka_admin: KafkaAdminClient) -> Iterator[Callable[..., str]]:
    """A factory: ``make_topic(partitions=1)`` creates a topic with a fresh name and returns
    the name; the topics are deleted when the test ends."""
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        kafka_admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
        created.append(name)
        return name

    yield make
    if created:
        kafka_admin.delete_topics(created)


def _start_containers(stack: ExitStack) -> Services:
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers before the community namespace
        from testcontainers.redis import RedisContainer

    kafka = stack.enter_context(_apache_kafka_container())
    redis_container = stack.enter_context(RedisContainer(REDIS_IMAGE))
    host = redis_container.get_container_host_ip()
    port = redis_container.get_exposed_port(redis_container.port)
    return Services(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "testcontainers")


def _apache_kafka_container() -> Any:
    """testcontainers' KafkaContainer run on the apache/kafka image, in KRaft mode.

    KafkaContainer's start script is written for Confluent's images; apache/kafka takes the
    same ``KAFKA_*`` variables but starts with ``/etc/kafka/docker/run``, as in
    testcontainers-java's ``org.testcontainers.kafka.KafkaContainer``.
    """
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the community namespace
        from testcontainers.kafka import KafkaContainer

    class ApacheKafkaContainer(KafkaContainer):  # type: ignore[misc]
        def _verify_min_kraft_version(self) -> None:
            pass  # its minimum, 7.0.0, is Confluent Platform's numbering; Kafka 4 is KRaft only

        def _configure_kraft(self) -> None:
            self.wait_for = re.compile(r".*Kafka Server started.*")
            self.with_env("CLUSTER_ID", self.cluster_id)
            self.with_env("KAFKA_NODE_ID", "1")
            self.with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            self.with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9094")
            self.with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            self.with_env("KAFKA_LISTENERS", f"{self.listeners},CONTROLLER://0.0.0.0:9094")
            self.with_env(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                f"{self.security_protocol_map},CONTROLLER:PLAINTEXT",
            )
            self.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            self.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            self.with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
            self.with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
            self.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
            # As docker-compose.yml: a killed label router's transaction is aborted soon.
            self.with_env(
                "KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS", "1000"
            )

        def tc_start(self) -> None:
            host = self.get_container_host_ip()
            port = self.get_exposed_port(self.port)
            script = (
                "#!/bin/bash\n"
                f"export KAFKA_ADVERTISED_LISTENERS={self.listener_name}://{host}:{port},"
                "BROKER://$(hostname -i | cut -d' ' -f1):9092\n"
                "exec /etc/kafka/docker/run\n"
            )
            self.create_file(script.encode(), KafkaContainer.TC_START_SCRIPT)

    return ApacheKafkaContainer(KAFKA_IMAGE).with_kraft()
