"""A worker, the lookup and the API on a real Redis Cluster (3 masters, 3 replicas), with
the master that holds the model's slot killed mid-stream.

The cluster promotes that master's replica (``cluster-node-timeout`` 2 s); the worker sees
Redis errors, rides them out and carries on against the new master; the killed node comes
back as a replica. At the end the model is River's own loop over the events, every event
learned exactly once, and the lookup and the API serve its final checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from typing import Any
from unittest import mock

import pytest
from prometheus_client import CollectorRegistry

from livelearn.serving.lookup import Lookup
from livelearn.serving.metrics import ServingMetrics
from livelearn.settings import Settings, load_settings
from livelearn.store.connection import checkpoint_store, redis_client
from tests.integration.conftest import (
    SNAPSHOT_KEY,
    Deployment,
    ServerHandle,
    WorkerHandle,
    encode,
    phishing_events,
    produce,
    wait_for,
)
from tests.integration.test_worker import assert_learned_as_rivers_loop

pytestmark = pytest.mark.integration

EVENTS = 1250  # every row of River's Phishing


def _on_cluster(dep: Deployment, url: str) -> Deployment:
    """Point the deployment's processes and its store at the cluster."""
    dep.env["LIVELEARN_REDIS__URL"] = url
    dep.store = checkpoint_store(
        Settings(redis={"url": url, "key_prefix": f"ll-{dep.model}"}),
        redis_client(Settings(redis={"url": url})),
    )
    return dep


def _lookup(dep: Deployment, registry: CollectorRegistry) -> Lookup:
    services = {
        name: dep.env[name]
        for name in ("LIVELEARN_KAFKA__BOOTSTRAP_SERVERS", "LIVELEARN_REDIS__URL")
    }
    with mock.patch.dict(os.environ, services):
        settings = load_settings(dep.config_path, security={"snapshot_key": SNAPSHOT_KEY})
    lookup = Lookup(settings, metrics=ServingMetrics(registry))
    lookup.start()
    return lookup


def _served(server: ServerHandle, model: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{server.url}/v1/models/{model}", headers=server.auth)
    with urllib.request.urlopen(request, timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def _counter(worker: WorkerHandle, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", worker.metrics(), re.MULTILINE)
    return sum(float(v) for v in found)


def _state(worker: WorkerHandle) -> str:
    wanted = (
        "livelearn_checkpoint",
        "livelearn_dependency_up",
        "livelearn_events_total",
        "livelearn_consumer_lag",
    )
    metrics = [line for line in worker.metrics().splitlines() if line.startswith(wanted)]
    return worker.tail() + "\n" + "\n".join(metrics)


def test_a_master_killed_mid_stream_loses_no_event_and_serving_follows(
    make_topic, deploy, redis_cluster
) -> None:
    topic = make_topic(partitions=1)
    dep = _on_cluster(
        deploy(
            topic,
            checkpoint={"every_events": 50, "every_seconds": 0.2},
            settings={"redis": {"socket_timeout_s": 1.0}, "serving": {"reload_check_seconds": 2}},
        ),
        redis_cluster.url,
    )
    events = phishing_events(n=EVENTS)
    worker = dep.start_worker()
    server = dep.start_server()
    lookup = _lookup(dep, CollectorRegistry())
    wait_for(lambda: "partitions claimed" in worker.log(), 60, "a claim", context=worker.tail)
    # Produced once the worker learns, slowly enough that the kill comes mid-stream.
    producer = threading.Thread(
        target=produce, args=(dep.bootstrap, topic, encode(events)), kwargs={"rate": 125}
    )
    producer.start()
    try:
        wait_for(lambda: dep.next_offset() >= 300, 60, "300 events learned", context=worker.tail)
        server.wait_ready(timeout=60)

        # Kill the master serving the model's slot; its replica takes over.
        tag = dep.store.keys.tag(dep.model)
        master = redis_cluster.master_of(tag)
        at_kill = dep.next_offset()
        redis_cluster.kill(master)
        promoted = redis_cluster.wait_promoted(tag, was=master)
        assert promoted != master
        assert worker.proc.poll() is None, worker.tail()
        # The old master comes back, as the new one's replica: WAIT is acknowledged again.
        redis_cluster.start(master)

        producer.join()

        def learned_everything() -> bool:
            assert worker.proc.poll() is None, f"the worker exited\n{worker.tail()}"
            return dep.next_offset() == EVENTS

        wait_for(
            learned_everything, 90, f"all {EVENTS} events learned", context=lambda: _state(worker)
        )
        assert at_kill < EVENTS  # the kill came mid-stream
        log = worker.log()
        assert "Redis does not answer" in log and "Redis answers again" in log, worker.tail()
        final = dep.store.describe(dep.shard())
        assert final is not None

        # The lookup and the API serve the final checkpoint (announced, or found by the
        # periodic check if the announcement fell in the failover).
        wait_for(
            lambda: lookup.describe(dep.model)["shards"][0]["next_offset"] == EVENTS,
            30,
            "the lookup to serve the final checkpoint",
        )
        wait_for(
            lambda: _served(server, dep.model)["shards"][0]["next_offset"] == EVENTS,
            30,
            "the API to serve the final checkpoint",
            context=server.tail,
        )
        served = _served(server, dep.model)["shards"][0]
        assert served["version"] == final["version"]
        prediction = lookup.predict_one(dep.model, events[0]["features"])
        assert prediction.shards == {f"{topic}/0": EVENTS}
    finally:
        lookup.close()
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)


def test_a_checkpoint_no_replica_acknowledges_holds_the_offset_commit(make_topic, deploy) -> None:
    """A lone server asked to WAIT for a replica never gets one: every checkpoint stands,
    is counted and logged, and Kafka's committed offset never passes it."""
    from kafka import KafkaConsumer, TopicPartition

    topic = make_topic(partitions=1)
    dep = deploy(
        topic,
        checkpoint={"every_events": 100, "every_seconds": 0.5},
        # Every checkpoint waits out the timeout: checkpoint.max_share would space them out
        # (their time is the learning thread's), and this test counts them at each 100 events.
        settings={
            "redis": {"wait_replicas": 1, "wait_timeout_ms": 50},
            "checkpoint": {"max_share": 1},
        },
    )
    events = phishing_events(n=400)
    produce(dep.bootstrap, topic, encode(events))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 400, 60, "400 events checkpointed", context=worker.tail)
    wait_for(
        lambda: _counter(worker, "livelearn_checkpoint_unreplicated_total") >= 4,
        30,
        "the unacknowledged checkpoints counted",
        context=worker.tail,
    )
    assert "0 of 1 replica(s) acknowledged it" in worker.log()
    assert worker.terminate() == 0, worker.tail()
    consumer = KafkaConsumer(bootstrap_servers=dep.bootstrap, group_id=f"g-{dep.model}")
    try:
        assert consumer.committed(TopicPartition(topic, 0)) is None  # held, never committed
    finally:
        consumer.close()
    assert_learned_as_rivers_loop(dep.learner(), events)
