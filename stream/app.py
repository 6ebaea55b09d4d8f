"""Wires the worker to the real Kafka, Redis and HTTP server from settings."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from redis.backoff import NoBackoff
from redis.retry import Retry

from livelearn.errors import ConfigError, DeadLetterError, ServiceUnavailable
from livelearn.settings import Settings, TopicSettings, server_list
from livelearn.store.connection import Client, checkpoint_store, redis_client
from livelearn.stream._confluent import ConfluentConsumer, librdkafka_config
from livelearn.stream._ledger import KafkaLedger, LedgerCodec
from livelearn.stream.dlq import KafkaDeadLetterSink, dead_letter_sink, dlq_topic
from livelearn.stream.fetcher import KafkaRecord, LocalConsumer, ProcessConsumer
from livelearn.stream.health import HealthServer
from livelearn.stream.label_router import LabelRouter, label_routes
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.outage import Backoff
from livelearn.stream.worker import Consumer, Partition, ShardProgress, Worker

log = logging.getLogger("livelearn.app")

T = TypeVar("T")

_BOOTSTRAP_TIMEOUT_MS = 5_000
# How long a stopping worker waits for the label router to finish its batch and close.
_ROUTER_STOP_S = 15.0


@contextlib.contextmanager
def kafka_admin(bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    """A Kafka admin client, closed on exit; ServiceUnavailable when no broker answers."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=server_list(bootstrap_servers),
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


def ensure_topics(
    bootstrap_servers: str,
    topics: dict[str, int],
    settings: TopicSettings,
    *,
    dead_letters: bool = False,
) -> list[str]:
    """Create the missing topics (name → partitions) as ``settings`` say; return those
    created. ``dead_letters`` keeps them ``topics.dead_letter_retention_days``.

    Raises
    ------
    ConfigError
        ``topics.replication_factor`` asks for more copies than the cluster has brokers.
    """
    with kafka_admin(bootstrap_servers) as admin:
        existing = set(admin.list_topics())
        wanted = {t: n for t, n in topics.items() if t not in existing}
        if not wanted:
            return []
        brokers = len(admin.describe_cluster()["brokers"])
        replicas, configs = topic_layout(settings, brokers, dead_letters=dead_letters)
        missing = [NewTopic(t, n, replicas, topic_configs=configs) for t, n in wanted.items()]
        with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by a peer
            admin.create_topics(missing, wait_for_metadata=True)
    log.info(
        "topics created",
        extra={"fields": {"topics": sorted(wanted), "replication_factor": replicas, **configs}},
    )
    return sorted(wanted)


def topic_layout(
    settings: TopicSettings, brokers: int, *, dead_letters: bool = False
) -> tuple[int, dict[str, str]]:
    """The replication factor and topic configs of a new topic on ``brokers`` brokers.

    >>> topic_layout(TopicSettings(), 3)
    (3, {'min.insync.replicas': '2'})
    >>> topic_layout(TopicSettings(), 1, dead_letters=True)
    (1, {'min.insync.replicas': '1', 'retention.ms': '2592000000'})
    """
    replicas = settings.replication_factor or min(3, brokers)
    if replicas > brokers:
        raise ConfigError(
            f"topics.replication_factor is {replicas} but the Kafka cluster has {brokers} "
            f"broker(s); lower it to {brokers} or less, or unset it to follow the cluster"
        )
    insync = settings.min_insync_replicas or (2 if replicas >= 3 else 1)
    if insync > replicas:
        raise ConfigError(
            f"topics.min_insync_replicas is {insync} but a new topic gets {replicas} "
            f"replica(s); lower it to {replicas} or less"
        )
    configs = {"min.insync.replicas": str(insync)}
    days = settings.dead_letter_retention_days if dead_letters else settings.retention_days
    if days is not None:
        configs["retention.ms"] = str(round(days * 86_400_000))
    return replicas, configs


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
    redis: Client
    # Forwards labels from separate label topics (None when no model has one).
    router: LabelRouter | None = None

    def run(self, install_signals: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or ``worker.stop()``), then close everything."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        if self.http is not None:
            self.http.start()
        forwarding = None
        if self.router is not None:
            forwarding = threading.Thread(target=self.router.run, name="label-router", daemon=True)
            forwarding.start()
        try:
            self.worker.run()
        finally:
            if self.router is not None and forwarding is not None:
                self.router.stop()
                forwarding.join(timeout=_ROUTER_STOP_S)
            try:
                self.dlq.close()
            except DeadLetterError as exc:
                # No checkpoint passed them: they are sent again when their events are
                # read again, after the restart.
                log.error("dead letters not acknowledged at shutdown: %s", exc)
            if self.http is not None:
                self.http.stop()
            self.redis.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after a final checkpoint", signal.Signals(signum).name)
        self.worker.stop()


def _riding_out(settings: Settings, call: Callable[[], T]) -> T:
    """``call()``, retried with backoff while Kafka (or a Redis cluster) does not answer, up to
    ``outage.timeout_s``; then its ServiceUnavailable, naming the setting."""
    outage = settings.outage
    backoff = Backoff(outage.retry_initial_s, outage.retry_max_s)
    deadline = time.monotonic() + outage.timeout_s
    while True:
        try:
            return call()
        except (ServiceUnavailable, KafkaError) as exc:
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailable(
                    f"{exc} (retried for outage.timeout_s={outage.timeout_s:g} s, "
                    "LIVELEARN_OUTAGE__TIMEOUT_S)"
                ) from None
            log.warning("not answering yet, retrying in %.1f s: %s", delay, exc)
            time.sleep(delay)


def build_worker(
    settings: Settings,
    *,
    on_progress: Callable[[list[ShardProgress], float], None] | None = None,
    on_batch: Callable[[Partition, list[KafkaRecord]], None] | None = None,
    serve_http: bool = True,
) -> WorkerProcess:
    """Connect to Kafka and Redis, create the dead-letter topics, and build a worker.

    ``on_progress`` and ``on_batch`` are the worker's hooks (see ``Worker``); ``on_batch``
    runs on the worker's thread after each batch is learned (bench/bench_worker.py times
    the worker with it).

    Raises
    ------
    ConfigError
        A required setting (services, keys, models) is missing.
    ServiceUnavailable
        Kafka does not answer. (Redis is waited for by the worker loop.)
    """
    bootstrap, _ = settings.require_services()
    codec = settings.snapshot_codec()
    hash_key = settings.require_secret("hash_key")
    if not settings.models:
        from livelearn.errors import ConfigError

        raise ConfigError("models is empty: configure at least one model spec")
    # Not pinged here: a worker started while Redis is down waits for it, up to
    # outage.timeout_s. One immediate retry covers a pooled connection that a Redis restart
    # closed; past that the worker's own backoff decides (redis-py's default would block
    # the loop for seconds on every call).
    # A cluster client asks for the slots at once: a cluster that does not answer yet is
    # ridden out as Kafka is.
    client = _riding_out(settings, lambda: redis_client(settings, retry=Retry(NoBackoff(), 1)))
    topics = sorted({t for spec in settings.models for t in spec.topics})
    routes = label_routes(settings.models)
    present = _riding_out(settings, lambda: existing_topics(bootstrap, [*topics, *routes]))
    for topic in [*topics, *routes]:
        if topic not in present:
            log.warning("topic %s does not exist yet; the worker waits for it", topic)
    dlq_topics = {dlq_topic(t, settings.kafka.dlq_suffix): 1 for t in [*topics, *routes]}
    _riding_out(
        settings,
        lambda: ensure_topics(bootstrap, dlq_topics, settings.topics, dead_letters=True),
    )
    k = settings.kafka
    config: dict[str, object] = {
        "bootstrap_servers": server_list(bootstrap),
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
        "fetch_min_bytes": k.fetch_min_bytes,
        "fetch_max_wait_ms": k.fetch_max_wait_ms,
        "metadata_max_age_ms": k.metadata_max_age_ms,
        # Labels forwarded from a separate topic come in transactions (stream/label_router.py):
        # an aborted one must never be learned.
        "isolation_level": "read_committed",
    }
    if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:  # kafka-python >= 3.0.12
        # A new consumer gives up soon when no broker answers (30 s by default), so that
        # the worker retries with its backoff and checks its outage bound in between.
        config["bootstrap_timeout_ms"] = _BOOTSTRAP_TIMEOUT_MS
    # The fetch process answers once its consumer is made; a broker that accepts
    # connections but does not answer is an outage the worker rides out, not a hang.
    start_timeout = max(15.0, min(60.0, settings.outage.timeout_s))

    rdkafka_config = librdkafka_config(k, bootstrap)
    metrics = WorkerMetrics()

    def make_consumer() -> Consumer:
        if k.client == "confluent":
            # librdkafka connects in the background: a Kafka that does not answer shows in
            # the consumer's status, which the worker watches (`KafkaWatch`).
            return ConfluentConsumer(
                rdkafka_config, k.max_poll_records, on_stats=metrics.kafka.update
            )
        try:
            if k.fetch_in_child:
                return ProcessConsumer(config, k.poll_timeout_ms, start_timeout)
            # Its subscribe() loads the topics' metadata before the first poll joins the
            # group, so the first assignment covers topics created just before start-up.
            return LocalConsumer(**config)
        except KafkaError as exc:
            raise ServiceUnavailable(f"Kafka consumer failed to start: {exc}") from None

    consumer = _riding_out(settings, make_consumer)
    store = checkpoint_store(settings, client)
    dlq = dead_letter_sink(settings)
    worker = Worker(
        settings,
        consumer,
        store,
        dlq,
        codec,
        hash_key,
        metrics,
        on_progress=on_progress,
        on_batch=on_batch,
        consumer_factory=make_consumer,
        ledger=KafkaLedger(
            LedgerCodec(codec.keys, k.group_id),
            k.group_id,
            {
                "bootstrap_servers": server_list(bootstrap),
                "client_id": f"{k.client_id}-ledger",
                "request_timeout_ms": 10_000,
            },
        ),
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
    router = None
    if routes:
        # A sink of its own: the router runs on its own thread.
        router = LabelRouter(settings, metrics, dead_letter_sink(settings))
    return WorkerProcess(worker, metrics, http, dlq, client, router)
