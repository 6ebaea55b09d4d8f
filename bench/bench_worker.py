"""Worker throughput against River's own loop, on the same events, in one run.

(a) River's in-memory test-then-train loop over the decoded events;
(b) a plain kafka-python consumer that decodes and learns, with no checkpoints;
(c) the livelearn worker end to end (decode, validate, sanitize, metrics, drift,
    checkpoints at the default cadence, offset commits).

Rates are measured from the first event handled to the last, so group joins
and start-up are left out of all three alike. Target: c/a ≥ 0.8.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from river import datasets

from livelearn.learners import ModelSpec
from livelearn.settings import KafkaSettings, load_settings
from livelearn.stream.app import build_worker, ensure_topics

SPECS: dict[str, dict[str, Any]] = {
    "StandardScaler|LogisticRegression": {
        "task": "binary",
        "pipeline": [
            {"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LogisticRegression"},
        ],
        "metrics": ["Accuracy"],
    },
    "HoeffdingTreeClassifier": {
        "task": "binary",
        "pipeline": [{"class": "tree.HoeffdingTreeClassifier"}],
        "metrics": ["Accuracy"],
    },
}


def _events(n: int) -> list[bytes]:
    rows = list(datasets.Phishing())
    out = []
    for i in range(n):
        x, y = rows[i % len(rows)]
        out.append(orjson.dumps({"id": f"e{i}", "ts": i, "key": None, "features": x, "label": y}))
    return out


def _spec(name: str, topic: str, body: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate({"name": name, "topics": [topic], **body})


def services() -> tuple[str, str]:
    """Kafka and Redis from the environment, else the local stack (started if needed)."""
    bootstrap = os.environ.get("LIVELEARN_KAFKA__BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("LIVELEARN_REDIS__URL")
    if not bootstrap or not redis_url:
        from livelearn.devtools import stack

        info = stack.up()
        bootstrap, redis_url = info.bootstrap_servers, info.redis_url
    return bootstrap, redis_url


def topic_with(bootstrap: str, values: list[bytes]) -> str:
    """A new one-partition topic holding ``values``."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 1})
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for v in values:
        producer.send(topic, v, partition=0)
    producer.flush()
    producer.close()
    return topic


def river_loop(spec: ModelSpec, values: list[bytes]) -> float:
    """(a) River's own loop on events already decoded in memory; events/s."""
    data = [orjson.loads(v) for v in values]
    data = [(e["features"], e["label"]) for e in data]
    model = spec.build_pipeline()
    metric = spec.build_metrics()[0]
    started = time.perf_counter()
    for x, y in data:
        y_pred = model.predict_one(x)
        if y_pred is not None:
            metric.update(y, y_pred)
        model.learn_one(x, y)
    return len(data) / (time.perf_counter() - started)


def plain_consumer(bootstrap: str, topic: str, spec: ModelSpec, n: int) -> float:
    """(b) kafka-python consumer + orjson + learner, no checkpoints; events/s."""
    fetch = KafkaSettings()  # the worker's fetch sizes, so (b) is its transport baseline
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=fetch.max_partition_fetch_bytes,
        fetch_max_bytes=fetch.fetch_max_bytes,
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    model = spec.build_pipeline()
    metric = spec.build_metrics()[0]
    seen = 0
    started = 0.0
    while seen < n:
        for records in consumer.poll(timeout_ms=500, max_records=fetch.max_poll_records).values():
            if not started:
                started = time.perf_counter()
            for rec in records:
                e = orjson.loads(rec.value)
                x, y = e["features"], e["label"]
                y_pred = model.predict_one(x)
                if y_pred is not None:
                    metric.update(y, y_pred)
                model.learn_one(x, y)
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def livelearn_worker(
    bootstrap: str,
    redis_url: str,
    topic: str,
    body: dict[str, Any],
    n: int,
    fetch_in_child: bool = KafkaSettings().fetch_in_child,
) -> float:
    """(c) the livelearn worker end to end, default checkpoint cadence; events/s.

    ``fetch_in_child=False`` gives (c1): the worker with its Kafka consumer on its own thread.
    """
    name = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("LIVELEARN_SECURITY__SNAPSHOT_KEY", uuid.uuid4().hex * 2)
    os.environ.setdefault("LIVELEARN_SECURITY__HASH_KEY", uuid.uuid4().hex * 2)
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": name, "fetch_in_child": fetch_in_child},
        redis={"url": redis_url, "key_prefix": name},
        log={"level": "WARNING", "format": "text", "progress_seconds": 3600},
        models=[{"name": name, "topics": [topic], **body}],
    )
    proc = build_worker(settings, serve_http=False)
    worker = proc.worker
    marks: dict[str, float] = {}

    def watch() -> None:
        while True:
            shards = [s for p in list(worker._partitions.values()) for s in p.shards]
            offset = shards[0].next_offset if shards else -1
            if offset > 0 and "first" not in marks:
                marks["first"] = time.perf_counter()
            if offset >= n:
                marks["last"] = time.perf_counter()
                worker.stop()
                return
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    proc.run(install_signals=False)
    # The first mark lands up to one poll batch late; count from the offset seen then.
    return n / (marks["last"] - marks["first"])


def main(events: int = 100_000) -> None:
    bootstrap, redis_url = services()
    values = _events(events)
    topic = topic_with(bootstrap, values)
    print(f"worker throughput, {events} Phishing events on one partition\n")
    print(
        f"{'model':36} {'(a) river':>12} {'(b) consumer':>13} {'(c) worker':>12} "
        f"{'c/a':>6} {'c/b':>6} {'(c1) 1 process':>15} {'c1/a':>6}"
    )
    costs = []
    for label, body in SPECS.items():
        spec = _spec("bench", topic, body)
        a = river_loop(spec, values)
        b = plain_consumer(bootstrap, topic, spec, events)
        c = livelearn_worker(bootstrap, redis_url, topic, body, events)
        c1 = livelearn_worker(bootstrap, redis_url, topic, body, events, False)
        print(
            f"{label:36} {a:10.0f}/s {b:11.0f}/s {c:10.0f}/s {c / a:6.2f} {c / b:6.2f} "
            f"{c1:13.0f}/s {c1 / a:6.2f}"
        )
        costs.append((label, 1e6 / a, 1e6 / b - 1e6 / a, 1e6 / c1 - 1e6 / b, 1e6 / c1 - 1e6 / c))
    print(
        "\ntarget: c/a >= 0.8  (c: the default worker, Kafka consumer in a child process;"
        "\n c1: kafka.fetch_in_child=false, everything on one thread)"
    )
    print("\nwhere the time goes, microseconds an event:")
    print(f"{'model':36} {'river':>8} {'kafka+json':>11} {'worker':>8} {'child saves':>12}")
    for label, river, transport, extra, saved in costs:
        print(f"{label:36} {river:8.1f} {transport:11.1f} {extra:8.1f} {saved:12.1f}")
    print(
        "(kafka+json: kafka-python fetch and record parsing plus JSON, = 1/b - 1/a;\n"
        " worker: validation, rolling metrics, drift, checkpoints, commits, = 1/c1 - 1/b;\n"
        " child saves: what moving the consumer to a child process takes off, = 1/c1 - 1/c)"
    )
