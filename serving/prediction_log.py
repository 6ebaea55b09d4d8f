"""The prediction log: every prediction the API serves, written to a Kafka topic.

Each record is an event of the contract (``id``, ``ts``, ``key``, ``features``: the
sanitized features the model predicted on) plus what was served (``model``,
``prediction``, ``proba``, ``release``, ``shards``), keyed by the event's key (else its
id). A model whose topics include the log and whose spec has ``delayed_labels`` learns
from it: label-only events produced to the log topic with the same key join the served
features, closing the loop served -> outcome -> learned.

A request never waits for Kafka: ``PredictionLog.log`` puts the record on a bounded
queue and a thread sends it. A full queue, a refused send or a lost one is counted
(``livelearn_api_prediction_log_total{outcome}``) and logged, never silent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter

from livelearn.settings import server_list

__all__ = ["PredictionLog"]

log = logging.getLogger("livelearn.serving.prediction_log")

_STOP = object()


class PredictionLog:
    """Sends served predictions to ``topic`` from a thread of its own."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        client_id: str,
        registry: CollectorRegistry,
        *,
        queue_size: int = 10_000,
        producer_factory: Callable[..., Any] = KafkaProducer,
    ) -> None:
        self.topic = topic
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._outcomes = Counter(
            "livelearn_api_prediction_log",
            "Predictions written to the prediction log (sent), or lost: dropped (the queue "
            "was full), failed (Kafka refused or timed out).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("sent", "dropped", "failed"):
            self._outcomes.labels(outcome)
        self._producer = producer_factory(
            bootstrap_servers=server_list(bootstrap_servers),
            client_id=f"{client_id}-prediction-log",
            # Every in-sync copy, and no duplicate when a send is retried.
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            retries=5,
        )
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def log(
        self,
        event_id: str,
        key: str | None,
        features: Mapping[str, Any],
        served: Mapping[str, Any],
    ) -> None:
        """Queue one served prediction; never blocks (a full queue drops it, counted)."""
        record = {
            "id": event_id,
            "ts": int(time.time() * 1000),
            "key": key,
            "features": dict(features),
            **{k: served[k] for k in ("model", "prediction", "proba", "release", "shards")},
        }
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._outcomes.labels("dropped").inc()
            log.warning("prediction log queue full: a prediction was not logged")

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is _STOP:
                return
            try:
                value = orjson.dumps(record)
                key = (record["key"] or record["id"]).encode()
                future = self._producer.send(self.topic, value=value, key=key)
                future.add_callback(lambda _: self._outcomes.labels("sent").inc())
                future.add_errback(self._failed)
            except Exception as exc:  # a send that cannot even be queued
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._outcomes.labels("failed").inc()
        log.warning("prediction not logged: %s: %s", type(exc).__name__, exc)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._producer.flush(timeout=timeout)
        self._producer.close(timeout=timeout)
