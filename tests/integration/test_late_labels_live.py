"""Delayed labels on a real Kafka broker and Redis server: joined exactly once, through a
SIGKILL, to the predictions they score."""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from river import datasets, linear_model, metrics, optim, preprocessing

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2


def _streams(n: int, seed: int) -> dict[int, list[dict[str, Any]]]:
    """Per partition, prediction events and label-only events in arrival order: each label
    0-60 s (event time) after its features, out of order. Event i lives in partition i % 2,
    as Kafka's partitioner would put both events of one key."""
    rng = random.Random(seed)
    base_ms = int(time.time() * 1000) - 3_600_000
    arrivals: dict[int, list[tuple[float, int, dict[str, Any]]]] = {
        p: [] for p in range(PARTITIONS)
    }
    for i, (x, y) in enumerate(datasets.Phishing()):
        if i == n:
            break
        t = float(i)
        part = arrivals[i % PARTITIONS]
        part.append((t, 1, {"id": f"e{i}", "ts": base_ms + int(t * 1000), "features": x}))
        late = t + rng.uniform(0, 60) + 0.5
        part.append((late, 0, {"id": f"e{i}", "ts": base_ms + int(late * 1000), "label": y}))
    return {p: [e for _, _, e in sorted(rows, key=lambda r: r[:2])] for p, rows in arrivals.items()}


def _rivers_loop(stream: list[dict[str, Any]]) -> tuple[Any, dict[str, float]]:
    """River's model and metrics, predicting on arrival, scoring and learning on the label."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(0.1))
    accuracy, logloss = metrics.Accuracy(), metrics.LogLoss()
    kept: dict[str, tuple[dict[str, Any], dict[Any, float]]] = {}
    for event in stream:
        if "features" in event:
            kept[event["id"]] = (event["features"], model.predict_proba_one(event["features"]))
            continue
        x, proba = kept.pop(event["id"])
        accuracy.update(event["label"], max(proba, key=proba.get) if proba else None)
        logloss.update(event["label"], proba)
        model.learn_one(x, event["label"])
    return model, {"Accuracy": accuracy.get(), "LogLoss": logloss.get()}


def test_late_out_of_order_labels_through_a_sigkill_equal_rivers_loop(make_topic, deploy) -> None:
    topic = make_topic(partitions=PARTITIONS)
    dep = deploy(
        topic,
        delayed_labels={"max_pending": 10_000, "max_age_s": 3600},
        checkpoint={"every_events": 50, "every_seconds": 0.5},
    )
    streams = _streams(1000, seed=5)
    total = {p: len(events) for p, events in streams.items()}  # 1000 each
    interleaved = [
        (p, e) for pair in zip(*streams.values(), strict=True) for p, e in enumerate(pair)
    ]

    def send_all() -> None:  # ~5 s of traffic: the kill lands mid-stream, mid-batch
        producer = KafkaProducer(bootstrap_servers=dep.bootstrap, acks="all", linger_ms=2)
        for i, (partition, event) in enumerate(interleaved):
            producer.send(topic, orjson.dumps(event), partition=partition)
            if i % 40 == 0:
                time.sleep(0.1)
        producer.flush(timeout=60)
        producer.close(timeout=10)

    sender = threading.Thread(target=send_all)
    worker = dep.start_worker()
    sender.start()
    wait_for(lambda: dep.next_offset(0) >= 300, 60, "part of the stream learned", every=0.02)
    worker.kill()  # mid-stream, with predictions pending in memory and in the checkpoint
    assert dep.next_offset(0) < total[0]
    assert dep.stats(0)["labels"]["pending"] > 0
    worker = dep.start_worker()
    sender.join(timeout=60)
    wait_for(
        lambda: all(dep.next_offset(p) == total[p] for p in range(PARTITIONS)),
        90,
        "the whole stream learned",
        context=worker.tail,
    )
    assert worker.terminate() == 0
    probes = [x for x, _ in list(datasets.Phishing())[1100:1150]]
    for partition, events in streams.items():
        learner = dep.learner(partition)
        reference, expected = _rivers_loop(events)
        stats = learner.stats()
        assert stats["events_learned"] == 500 and stats["events_scored"] == 500
        assert stats["labels"] == {"joined": 500, "expired": 0, "pending": 0}
        for name, value in expected.items():
            assert math.isclose(stats["metrics"][name], value, rel_tol=0, abs_tol=1e-12), name
        for x in probes:
            got, want = learner.predict_proba_one(x), reference.predict_proba_one(x)
            assert all(math.isclose(got[k], want[k], rel_tol=0, abs_tol=1e-12) for k in want)
