"""The prediction log never makes a request wait, and never loses a record silently."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import orjson
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from livelearn.serving.api import create_app
from livelearn.serving.metrics import ServingMetrics
from livelearn.serving.prediction_log import PredictionLog
from livelearn.settings import Settings
from tests.unit.test_api_routes import AUTH, PREDICT, TOKEN, FakeLookup


class _Future:
    def __init__(self, error: Exception | None) -> None:
        self._error = error

    def add_callback(self, fn: Any) -> _Future:
        if self._error is None:
            fn(None)
        return self

    def add_errback(self, fn: Any) -> _Future:
        if self._error is not None:
            fn(self._error)
        return self


class FakeProducer:
    """Records what is sent; ``gate`` holds sends back, ``fail`` makes them fail."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.entered = threading.Event()

    def send(self, topic: str, value: bytes, key: bytes) -> _Future:
        self.entered.set()
        self.gate.wait(10)
        self.sent.append((topic, value, key))
        return _Future(self.fail)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def _log(queue_size: int = 100) -> tuple[PredictionLog, FakeProducer, CollectorRegistry]:
    made: list[FakeProducer] = []

    def factory(**config: Any) -> FakeProducer:
        made.append(FakeProducer(**config))
        return made[0]

    registry = CollectorRegistry()
    log = PredictionLog(
        "kafka:9092", "served", "api", registry, queue_size=queue_size, producer_factory=factory
    )
    return log, made[0], registry


def _count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value("livelearn_api_prediction_log_total", {"outcome": outcome})
    return 0.0 if value is None else value


def test_served_predictions_are_logged_with_their_id_key_and_features() -> None:
    log, producer, registry = _log()
    settings = Settings(serving={"tokens": [TOKEN]})
    app = create_app(_Lookup(), settings, ServingMetrics(CollectorRegistry()), log)  # type: ignore[arg-type]
    with TestClient(app) as client:
        one = client.post(
            PREDICT.format(name="phishing"),
            json={"features": {"x": 1.5}, "key": "user-7", "id": "pay-1"},
            headers=AUTH,
        ).json()
        many = client.post(
            PREDICT.format(name="phishing"),
            json={"events": [{"features": {"x": 2.0}}, {"features": {"x": 3.0}}]},
            headers=AUTH,
        ).json()["predictions"]
    log.close()
    assert not log._thread.is_alive()
    assert one["id"] == "pay-1"
    generated = [p["id"] for p in many]
    assert all(len(i) == 32 for i in generated) and generated[0] != generated[1]
    records = [(orjson.loads(v), k) for _, v, k in producer.sent]
    assert [(r["id"], k) for r, k in records] == [
        ("pay-1", b"user-7"),
        (generated[0], generated[0].encode()),
        (generated[1], generated[1].encode()),
    ]
    first = records[0][0]
    assert first["features"] == {"x": 1.5} and first["prediction"] is True
    assert first["model"] == "phishing" and first["shards"] == {"phishing/0": 42}
    assert producer.config["acks"] == "all"
    assert _count(registry, "sent") == 3


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    log, producer, registry = _log(queue_size=2)
    producer.gate.clear()  # Kafka is slow: nothing leaves the queue
    log.log("e0", None, {"x": 1.0}, _served())
    assert producer.entered.wait(5)  # the sender holds the first record
    for i in range(1, 6):
        log.log(f"e{i}", None, {"x": 1.0}, _served())
    # Two wait in the queue, the others are dropped, and no call waited.
    assert _count(registry, "dropped") == 3
    producer.gate.set()
    log.close()
    assert _count(registry, "sent") == 3


def test_a_refused_send_is_counted_as_failed() -> None:
    log, producer, registry = _log()
    producer.fail = RuntimeError("NotEnoughReplicas")
    log.log("e1", None, {"x": 1.0}, _served())
    log.close()
    assert _count(registry, "failed") == 1 and _count(registry, "sent") == 0


class _Lookup(FakeLookup):
    """Predictions that carry the features they were made on, as the real lookup's do."""

    def _predict(self, model: str, features: Any) -> Any:
        return dataclasses.replace(super()._predict(model, features), features=dict(features))


def _served() -> dict[str, Any]:
    return {"model": "m", "prediction": 1, "proba": None, "release": None, "shards": {}}
