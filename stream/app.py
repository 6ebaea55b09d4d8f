"""Wires the worker to the real Kafka, Redis and HTTP server from settings."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType

import redis
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from learners import SnapshotCodec
from livelearn.errors import ServiceUnavailable
from settings import Settings
from store.checkpoints import RedisCheckpointStore
from store.connection import connect_redis
from stream.dlq import KafkaDeadLetterSink, dead_letter_sink, dlq_topic
from stream.fetcher import ProcessConsumer
from stream.health import HealthServer
from stream.metrics import WorkerMetrics
from stream.worker import Consumer, ShardProgress, Worker

log = logging.getLogger("livelearn.app")


@contextlib.contextmanager
def kafka_admin(bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    """A Kafka admin client, closed on exit; ServiceUnavailable when no broker answers."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="livelearn-admin",
            request_timeout_ms=10_000,
        )
    except KafkaError:
        raise ServiceUnavailable(
            f"no Kafka broker answers at kafka.bootstrap_servers={bootstrap_servers}; "
            "start it or fix the setting"
        ) from None
    try:
        yield admin
    finally:
        admin.close()


def ensure_topics(bootstrap_servers: str, topics: dict[str, int]) -> list[str]:
    """Create the missing topics (name → partitions); return those created."""
    with kafka_admin(bootstrap_servers) as admin:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
        if not missing:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by a peer
            admin.create_topics(missing)
    return [t.name for t in missing]


def existing_topics(bootstrap_servers: str, topics: Iterable[str]) -> set[str]:
    """Which of ``topics`` exist on the broker."""
    with kafka_admin(bootstrap_servers) as admin:
        return set(admin.list_topics()) & set(topics)


@dataclass
class WorkerProcess:
    """A worker with its adapters and HTTP endpoints."""

    worker: Worker
    metrics: WorkerMetrics
    http: HealthServer | None
    dlq: KafkaDeadLetterSink
    redis: redis.Redis

    def run(self, install_signals: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or ``worker.stop()``), then close everything."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        if self.http is not None:
            self.http.start()
        try:
            self.worker.run()
        finally:
            self.dlq.close()
            if self.http is not None:
                self.http.stop()
            self.redis.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after a final checkpoint", signal.Signals(signum).name)
        self.worker.stop()


def build_worker(
    settings: Settings,
    *,
    on_progress: Callable[[list[ShardProgress], float], None] | None = None,
    serve_http: bool = True,
) -> WorkerProcess:
    """Connect to Kafka and Redis, create the dead-letter topics, and build a worker.

    Raises
    ------
    ConfigError
        A required setting (services, keys, models) is missing.
    ServiceUnavailable
        Kafka or Redis does not answer.
    """
    bootstrap, _ = settings.require_services()
    codec = SnapshotCodec(settings.require_secret("snapshot_key"))
    hash_key = settings.require_secret("hash_key")
    if not settings.models:
        from livelearn.errors import ConfigError

        raise ConfigError("models is empty: configure at least one model spec")
    client = connect_redis(settings)
    topics = sorted({t for spec in settings.models for t in spec.topics})
    present = existing_topics(bootstrap, topics)
    for topic in topics:
        if topic not in present:
            log.warning("topic %s does not exist yet; the worker waits for it", topic)
    ensure_topics(bootstrap, {dlq_topic(t, settings.kafka.dlq_suffix): 1 for t in topics})
    k = settings.kafka
    try:
        config = {
            "bootstrap_servers": bootstrap,
            "group_id": k.group_id,
            "client_id": k.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": k.auto_offset_reset,
            "session_timeout_ms": k.session_timeout_ms,
            "heartbeat_interval_ms": k.heartbeat_interval_ms,
            "max_poll_interval_ms": k.max_poll_interval_ms,
            "max_poll_records": k.max_poll_records,
            "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
            "fetch_max_bytes": k.fetch_max_bytes,
            "metadata_max_age_ms": k.metadata_max_age_ms,
        }
        consumer: Consumer
        if k.fetch_in_child:
            consumer = ProcessConsumer(config, k.poll_timeout_ms)
        else:
            local = KafkaConsumer(**config)
            # Load the topics' metadata before joining, so the first assignment covers
            # topics created just before start-up.
            for topic in present:
                local.partitions_for_topic(topic)
            consumer = local
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka consumer failed to start: {exc}") from None
    metrics = WorkerMetrics()
    store = RedisCheckpointStore(client, settings.redis.key_prefix)
    dlq = dead_letter_sink(settings)
    worker = Worker(
        settings, consumer, store, dlq, codec, hash_key, metrics, on_progress=on_progress
    )
    http = None
    if serve_http:
        http = HealthServer(
            settings.http.host,
            settings.http.port,
            metrics.registry,
            worker.health,
            worker.readiness,
        )
        log.info(
            "serving /metrics /healthz /readyz",
            extra={"fields": {"url": f"http://{settings.http.host}:{http.port}/metrics"}},
        )
    return WorkerProcess(worker, metrics, http, dlq, client)
