"""Fixtures that run real workers (subprocesses) against the session's Kafka and Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from livelearn.learners import Learner, SnapshotCodec
from livelearn.settings import server_list
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.stream.dlq import close_producer

SNAPSHOT_KEY = "integration-snapshot-key-0123456789"
API_TOKEN = "t0k3n-integration-0123456789"
HASH_KEY = "integration-hash-key-0123456789"

LOGREG_PIPELINE = [
    {"class": "preprocessing.StandardScaler"},
    {
        "class": "linear_model.LogisticRegression",
        "params": {"optimizer": {"class": "optim.SGD", "params": {"lr": 0.1}}},
    },
]


# The worker's Kafka consumers, as the settings choose them (`kafka.client`,
# `kafka.fetch_in_child`): the tests of its exactly-once guarantees run on each of them.
CONSUMERS: dict[str, dict[str, Any]] = {
    "child-fetcher": {"client": "kafka-python", "fetch_in_child": True},
    "in-process": {"client": "kafka-python", "fetch_in_child": False},
    "confluent": {"client": "confluent"},
}
each_consumer = pytest.mark.parametrize("consumer", list(CONSUMERS.values()), ids=list(CONSUMERS))
# Each Kafka client (`kafka.client`) with its defaults: for the tests of what the worker does
# with Kafka beside consuming (the label router's transactions, dead letters) and of
# outages, where kafka-python's two consumers behave alike.
each_client = pytest.mark.parametrize("client", ["kafka-python", "confluent"])


def runs_a_fetch_process(consumer: dict[str, Any]) -> bool:
    """Whether a worker with the ``consumer`` settings runs kafka-python in a child process."""
    return consumer["client"] == "kafka-python" and consumer["fetch_in_child"]


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.1,
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout.

    ``context`` (e.g. a worker's log tail) is shown with the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{context()}" if context is not None else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(every)


def free_port_run(length: int) -> int:
    """The first of ``length`` consecutive ports free now (Kafka's controller takes the
    port after its listener; a cluster's nodes take pairs in a row)."""
    for _ in range(200):
        socks: list[socket.socket] = []
        try:
            first = socket.socket()
            socks.append(first)
            first.bind(("127.0.0.1", 0))
            base = int(first.getsockname()[1])
            for port in range(base + 1, base + length):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError(f"no {length} consecutive free ports on 127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerHandle:
    """A ``livelearn worker`` subprocess and where its output goes."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    http_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        """The worker's /metrics text, or "" while it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    def readyz(self) -> tuple[int | None, dict[str, Any]]:
        """The worker's /readyz status and body; None while it does not answer."""
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read())
        except OSError:
            return None, {}

    def tail(self) -> str:
        return "worker log (tail):\n" + self.log()[-3000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@dataclass
class ServerHandle:
    """A ``livelearn serve`` subprocess, its port and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def tail(self) -> str:
        return "server log (tail):\n" + self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until /readyz answers 200; fail with the log if the server exits or never does."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"livelearn serve exited with {self.proc.returncode}\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout, "the API to be ready", context=self.tail)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@dataclass
class Deployment:
    """One test's configuration: its model, topic, group and the services."""

    config_path: Path
    env: dict[str, str]
    model: str
    topic: str
    store: RedisCheckpointStore
    codec: SnapshotCodec
    bootstrap: str
    tmp_path: Path
    workers: list[WorkerHandle]
    servers: list[ServerHandle] = field(default_factory=list)

    def start_server(self, token: str = API_TOKEN) -> ServerHandle:
        """Run ``livelearn serve`` on a free port with the deployment's config and ``token``."""
        port = free_port()
        log_path = self.tmp_path / f"server-{len(self.servers)}.log"
        env = {
            **self.env,
            "LIVELEARN_SERVING__PORT": str(port),
            "LIVELEARN_SERVING__TOKENS": json.dumps([token]),
        }
        handle = ServerHandle(self._spawn("serve", env, log_path), log_path, port, token)
        self.servers.append(handle)
        return handle

    def start_worker(self, env: dict[str, str] | None = None) -> WorkerHandle:
        """Run ``livelearn worker``; ``env`` adds variables (settings) for this one."""
        port = free_port()
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        env = {**self.env, **(env or {}), "LIVELEARN_HTTP__PORT": str(port)}
        handle = WorkerHandle(self._spawn("worker", env, log_path), log_path, port)
        self.workers.append(handle)
        return handle

    def _spawn(self, command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        """``livelearn --config <this config> <command>``, its output going to ``log_path``."""
        with log_path.open("wb") as out:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "livelearn.cli.main",
                    "--config",
                    str(self.config_path),
                    command,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def shard(self, partition: int = 0) -> ShardId:
        return ShardId(self.model, self.topic, partition)

    def next_offset(self, partition: int = 0) -> int:
        row = self.store.describe(self.shard(partition))
        return -1 if row is None else int(row["next_offset"])

    def wait_for_offsets(
        self, per_partition: int, partitions: int, timeout: float, worker: WorkerHandle
    ) -> None:
        """Wait until each of the first ``partitions`` shards is checkpointed at
        ``per_partition``; fail with ``worker``'s log past ``timeout`` seconds."""
        wait_for(
            lambda: all(self.next_offset(p) == per_partition for p in range(partitions)),
            timeout,
            f"every partition to be checkpointed at offset {per_partition}",
            context=worker.tail,
        )

    def learner(self, partition: int = 0) -> Learner:
        checkpoint = self.store.load(self.shard(partition))
        assert checkpoint is not None, f"no checkpoint for {self.shard(partition)}"
        learner = self.codec.decode(checkpoint.blob)
        assert isinstance(learner, Learner)
        return learner

    def stats(self, partition: int = 0) -> dict[str, Any]:
        row = self.store.describe(self.shard(partition))
        assert row is not None
        return dict(row["stats"])


def service_env(services: Any) -> dict[str, str]:
    """This process's environment with the session's services and the test keys."""
    return {
        **os.environ,
        "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "LIVELEARN_REDIS__URL": services.redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": SNAPSHOT_KEY,
        "LIVELEARN_SECURITY__HASH_KEY": HASH_KEY,
    }


@pytest.fixture
def deploy(
    services: Any, unique_name: str, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., Deployment]]:
    """Factory: ``deploy(topic, **model_overrides)`` writes a config and returns a Deployment."""
    made: list[Deployment] = []

    def make(topic: str, settings: dict[str, Any] | None = None, **model: Any) -> Deployment:
        name = model.pop("name", unique_name)
        spec = {
            "name": name,
            "topics": [topic],
            "task": "binary",
            "pipeline": LOGREG_PIPELINE,
            "metrics": ["Accuracy", "LogLoss"],
            "checkpoint": {"every_events": 100, "every_seconds": 1.0},
            **model,
        }
        config = {
            "kafka": {
                "group_id": f"g-{name}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "redis": {"key_prefix": f"ll-{name}"},
            "log": {"format": "json", "level": "INFO", "progress_seconds": 2},
            # kafka-python can leave a consumer out of its group after a join that went
            # wrong (more often on a loaded machine): a new consumer sooner than the
            # production default keeps the tests' waits short.
            "outage": {"stall_timeout_s": 10},
            "models": [spec],
        }
        for section, values in (settings or {}).items():  # merged into the defaults above
            config[section] = {**config.get(section, {}), **values}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = service_env(services)
        dep = Deployment(
            path,
            env,
            name,
            topic,
            RedisCheckpointStore(redis_client, f"ll-{name}"),
            SnapshotCodec(SNAPSHOT_KEY.encode()),
            services.bootstrap_servers,
            tmp_path,
            [],
        )
        made.append(dep)
        return dep

    yield make
    for dep in made:
        for proc in [w.proc for w in dep.workers] + [s.proc for s in dep.servers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def phishing_events(n: int | None = None, start: int = 0) -> list[dict[str, Any]]:
    """Phishing rows as contract events, ids from ``start``."""
    from river import datasets

    rows = list(datasets.Phishing())[start : None if n is None else start + n]
    return [
        {"id": f"e{start + i}", "ts": 1_700_000_000_000 + i, "key": None, "features": x, "label": y}
        for i, (x, y) in enumerate(rows)
    ]


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes | None],
    *,
    partitions: int = 1,
    rate: float | None = None,
    max_request_size: int = 1024 * 1024,
) -> None:
    """Send raw values, value i to partition i % partitions, at most ``rate`` a second; a
    null value (a tombstone) gets a key, as Kafka refuses a record with neither."""
    producer = KafkaProducer(
        bootstrap_servers=server_list(bootstrap),
        acks="all",
        linger_ms=2,
        max_request_size=max_request_size,
    )
    started = time.monotonic()
    try:
        for i, value in enumerate(values):
            key = b"tombstone" if value is None else None
            producer.send(topic, value, key=key, partition=i % partitions)
            if rate:
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
    finally:
        close_producer(producer, 10)  # its thread stopped, even with a broker down


def encode(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def read_all(
    bootstrap: str, topic: str, timeout: float = 10.0, *, committed: bool = False
) -> list[Any]:
    """Every record of ``topic`` (all partitions), read without a group; ``committed``:
    only those of committed transactions, as the worker reads."""
    consumer = KafkaConsumer(
        bootstrap_servers=server_list(bootstrap),
        enable_auto_commit=False,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
            if time.monotonic() > deadline:
                break
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster of the module's own (3 masters, 3 replicas) on free loopback ports;
    its nodes are killed and started by the tests."""
    from livelearn.devtools.redis_cluster import RedisCluster

    # Six client ports, then their six cluster-bus ports.
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), free_port_run(12))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
