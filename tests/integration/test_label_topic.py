"""Delayed labels from a separate topic, on a real Kafka broker and Redis server: each label
is forwarded to the model's topic exactly once, through a SIGKILL of the worker in the
middle of forwarding, and the model equals River's loop fed each (features, label) pair
in label-arrival order."""

from __future__ import annotations

import json
import math
import random
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from river import datasets

from livelearn.stream.dlq import read_headers
from livelearn.stream.label_router import SOURCE_HEADER
from tests.integration.conftest import each_client, read_all, wait_for
from tests.integration.test_late_labels_live import _rivers_loop
from tests.integration.test_replay import _replay_argv

pytestmark = pytest.mark.integration

N = 1000


def label_stream(seed: int, n: int = N) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The prediction events, and their labels 0-60 s (event time) later, out of order."""
    rng = random.Random(seed)
    base_ms = int(time.time() * 1000) - 3_600_000
    features, labels = [], []
    for i, (x, y) in enumerate(datasets.Phishing()):
        if i == n:
            break
        features.append({"id": f"e{i}", "ts": base_ms + i * 1000, "features": x})
        late = i + rng.uniform(0, 60) + 0.5
        labels.append((late, {"id": f"e{i}", "ts": base_ms + int(late * 1000), "label": y}))
    return features, [label for _, label in sorted(labels, key=lambda row: row[0])]


def _deploy(make_topic: Any, deploy: Any, client: str) -> tuple[Any, str]:
    """A model on a 2-partition topic taking its labels from a 3-partition label topic (a
    key lands in another partition there), on the Kafka ``client``; the deployment and the
    label topic."""
    topic, label_topic = make_topic(partitions=2), make_topic(partitions=3)
    dep = deploy(
        topic,
        settings={"kafka": {"client": client}},
        delayed_labels={"topic": label_topic, "max_pending": 10_000, "max_age_s": 3600},
        checkpoint={"every_events": 50, "every_seconds": 0.5},
    )
    return dep, label_topic


@each_client
def test_labels_from_their_own_topic_are_forwarded_once_through_a_sigkill(
    make_topic, deploy, client
) -> None:
    dep, label_topic = _deploy(make_topic, deploy, client)
    features, labels = label_stream(seed=11)
    bad = [b"not json", orjson.dumps(features[0]), orjson.dumps({"id": "e1"})]

    # ~5 s of traffic, the bad records half-way.
    sender = threading.Thread(
        target=produce_with_labels, args=(dep, label_topic, features, labels, bad)
    )
    worker = dep.start_worker()
    sender.start()
    wait_for(lambda: joined(dep, 2) >= 150, 60, "labels joined", every=0.02)
    worker.kill()  # mid-stream: labels still to forward, predictions pending in the shards
    assert joined(dep, 2) < N
    worker = dep.start_worker()
    sender.join(timeout=60)
    wait_for(lambda: joined(dep, 2) == N, 120, "every label joined", context=worker.tail)
    assert worker.terminate() == 0

    records = assert_forwarded_once(dep, label_topic, labels)
    letters = read_all(dep.bootstrap, f"{label_topic}.dlq", timeout=10)
    reasons = Counter(read_headers(r.headers)["reason"] for r in letters)
    assert reasons == Counter({"not_json": 1, "not_a_label": 1, "missing_field": 1})

    # A replay of the model's topic reads the same committed records: the same counts, and
    # no label twice (an aborted forward would be a duplicate there).
    result = subprocess.run(
        [*_replay_argv(dep), "--report", str(dep.tmp_path / "r")],
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((dep.tmp_path / "r" / "report.json").read_text())
    assert report["counts"] == {"learned": N, "scored": N, "invalid": 0}

    weighted = assert_rivers_loop(dep, records, partitions=2)
    for name, value in report["replayed"]["metrics"].items():
        assert math.isclose(value, weighted[name], rel_tol=0, abs_tol=1e-12), name


def assert_forwarded_once(dep: Any, label_topic: str, labels: list[dict[str, Any]]) -> list[Any]:
    """The model's topic holds each label once, as a committed record forwarded from
    ``label_topic``, and nothing was dead-lettered on it; its committed records."""
    records = read_all(dep.bootstrap, dep.topic, timeout=30, committed=True)
    forwarded = [r for r in records if b'"features"' not in r.value]
    assert len(forwarded) == len(labels)
    assert Counter(orjson.loads(r.value)["id"] for r in forwarded) == Counter(
        label["id"] for label in labels
    )
    sources = {r.headers and dict(r.headers)[SOURCE_HEADER].decode() for r in forwarded}
    assert len(sources) == len(labels)
    assert all(s.startswith(f"{label_topic}/") for s in sources)
    assert read_all(dep.bootstrap, f"{dep.topic}.dlq", timeout=5) == []  # no duplicate, miss
    return records


def assert_rivers_loop(dep: Any, records: list[Any], partitions: int) -> Counter[str]:
    """Each shard equals River's loop over its partition's committed records in order:
    each event predicted on arrival, scored and learned when its label arrived. The
    metrics weighted by events, as a replay over every partition reports them."""
    probes = [x for x, _ in list(datasets.Phishing())[1100:1150]]
    weighted: Counter[str] = Counter()
    total = sum(b'"features"' in r.value for r in records)
    for partition in range(partitions):
        stream = [
            orjson.loads(r.value)
            for r in sorted(records, key=lambda r: r.offset)
            if r.partition == partition
        ]
        learner = dep.learner(partition)
        reference, expected = _rivers_loop(stream)
        stats = learner.stats()
        predicted = sum("features" in e for e in stream)
        assert stats["events_learned"] == predicted == sum("label" in e for e in stream)
        assert stats["labels"] == {"joined": predicted, "expired": 0, "pending": 0}
        for name, value in expected.items():
            assert math.isclose(stats["metrics"][name], value, rel_tol=0, abs_tol=1e-12), name
            weighted[name] += value * predicted / total  # both metrics are means over events
        for x in probes:
            got, want = learner.predict_proba_one(x), reference.predict_proba_one(x)
            assert all(math.isclose(got[k], want[k], rel_tol=0, abs_tol=1e-12) for k in want)
    return weighted


def produce_with_labels(
    dep: Any,
    label_topic: str,
    features: list[dict[str, Any]],
    labels: list[dict[str, Any]],
    bad: list[bytes] | None = None,
) -> None:
    """The events keyed by id on the model's topic; each label keyed alike on the label
    topic (where its key may land in another partition), once its time has come; ``bad``
    records on the label topic half-way. A pause every 20 events: ~5 s for 1000."""
    producer = KafkaProducer(bootstrap_servers=dep.bootstrap, acks="all", linger_ms=2)
    pending = list(labels)
    for i, event in enumerate(features):
        producer.send(dep.topic, orjson.dumps(event), key=event["id"].encode())
        while pending and pending[0]["ts"] <= event["ts"]:
            label = pending.pop(0)
            producer.send(label_topic, orjson.dumps(label), key=label["id"].encode())
        if i % 20 == 0:
            producer.flush()
            time.sleep(0.1)
        if i == len(features) // 2:
            for value in bad or []:
                producer.send(label_topic, value, key=b"bad")
    for label in pending:
        producer.send(label_topic, orjson.dumps(label), key=label["id"].encode())
    producer.flush(timeout=60)
    producer.close(timeout=10)


def joined(dep: Any, partitions: int) -> int:
    """Labels joined over the model's shards, as checkpointed."""
    rows = [dep.store.describe(dep.shard(p)) for p in range(partitions)]
    return sum(int(r["stats"].get("labels", {}).get("joined", 0)) for r in rows if r)


@each_client
def test_two_workers_side_by_side_forward_each_label_once_when_one_is_killed(
    make_topic, deploy, client
) -> None:
    dep, label_topic = _deploy(make_topic, deploy, client)
    features, labels = label_stream(seed=23, n=800)
    sender = threading.Thread(target=produce_with_labels, args=(dep, label_topic, features, labels))
    first, second = dep.start_worker(), dep.start_worker()
    sender.start()
    wait_for(lambda: joined(dep, 2) >= 200, 60, "labels joined", every=0.02)
    first.kill()  # its shards and its label partitions move to the other worker
    sender.join(timeout=60)
    wait_for(lambda: joined(dep, 2) == 800, 120, "every label joined", context=second.tail)
    assert second.terminate() == 0
    records = assert_forwarded_once(dep, label_topic, labels)
    assert_rivers_loop(dep, records, partitions=2)
