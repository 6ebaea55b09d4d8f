"""Checkpoints that cannot be forged or rolled back, and keys that rotate (issue 18).

The attacker can write to Redis but holds no key. Each attack on the real Redis (and, for
the rollback, Kafka's committed record) is refused: counted, logged, the shard held and
listed by /readyz, nothing unpickled or overwritten. The key rotation runs under traffic
with two workers and the API serving, and refuses nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import redis
from prometheus_client import CollectorRegistry

from livelearn import ReleaseError
from livelearn.cli.models import describe_model
from livelearn.learners import Keyring, SnapshotCodec
from livelearn.serving import Lookup
from livelearn.serving.metrics import ServingMetrics
from livelearn.settings import load_settings
from livelearn.store.releases import ReleaseStore
from tests.integration.conftest import (
    SNAPSHOT_KEY,
    Deployment,
    WorkerHandle,
    each_consumer,
    encode,
    phishing_events,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

NEW_KEY = "rotated-snapshot-key-0123456789abcdef"


def _hash_key(dep: Deployment, partition: int = 0) -> str:
    return dep.store.keys.shard(dep.model, dep.topic, partition)


def _refused_shards(worker: WorkerHandle) -> list[str]:
    """The shards the worker's /readyz lists as refused (it answers 503 while any is)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/readyz", timeout=2)
    except urllib.error.HTTPError as error:
        assert error.code == 503
        return list(json.loads(error.read())["refused_shards"])
    except OSError:
        return []
    return []


def _assert_refused(dep: Deployment, worker: WorkerHandle, shards: list[str], why: str) -> None:
    """The worker refused ``shards``: counted once each, logged with ``why``, listed."""
    sample = f'livelearn_snapshots_refused_total{{model="{dep.model}"}} {len(shards)}.0'
    wait_for(
        lambda: sample in worker.metrics(), 60, "the refusal to be counted", context=worker.tail
    )
    wait_for(
        lambda: sorted(_refused_shards(worker)) == sorted(shards),
        30,
        f"/readyz to list {shards}",
        context=worker.tail,
    )
    assert "snapshot refused" in worker.log() and why in worker.log(), worker.tail()


def _learn(dep: Deployment, events: int, start: int = 0, partitions: int = 1) -> None:
    """Produce ``events`` more and run a worker until they are checkpointed."""
    produce(
        dep.bootstrap,
        dep.topic,
        encode(phishing_events(n=events, start=start)),
        partitions=partitions,
    )
    worker = dep.start_worker()
    total = (start + events) // partitions
    wait_for(
        lambda: all(dep.next_offset(p) == total for p in range(partitions)),
        90,
        f"checkpoints at {total}",
        context=worker.tail,
    )
    assert worker.terminate() == 0, worker.tail()


def _edit(field: str, delta: int) -> Callable[[redis.Redis, str], None]:
    def edit(client: redis.Redis, key: str) -> None:
        client.hincrby(key, field, delta)

    return edit


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (_edit("next_offset", 100), "next_offset: signed 200, expected 300"),
        (_edit("next_offset", -100), "next_offset: signed 200, expected 100"),
        (_edit("epoch", 1), "epoch: signed"),
        (_edit("version", 1), "version: signed"),
        (_edit("version", -1), "version: signed"),
    ],
    ids=["next-offset-raised", "next-offset-lowered", "epoch", "version-raised", "version-lowered"],
)
def test_an_edited_checkpoint_field_is_refused(
    make_topic: Any, deploy: Any, redis_client: redis.Redis, edit: Any, why: str
) -> None:
    dep = deploy(make_topic(partitions=1))
    _learn(dep, 200)
    key = _hash_key(dep)
    edit(redis_client, key)
    before = redis_client.hgetall(key)

    worker = dep.start_worker()
    _assert_refused(dep, worker, [f"{dep.model}/{dep.topic}/0"], why)
    assert worker.terminate() == 0
    assert redis_client.hgetall(key) == before  # nothing overwritten, nothing learned
    assert dep.stats()["events_learned"] == 200


@each_consumer
def test_an_older_validly_signed_checkpoint_written_back_is_refused(
    make_topic: Any, deploy: Any, redis_client: redis.Redis, consumer: dict[str, Any]
) -> None:
    """Kafka's committed record, written by each consumer backend, refuses it."""
    dep = deploy(make_topic(partitions=1), settings={"kafka": consumer})
    _learn(dep, 200)
    key = _hash_key(dep)
    old = redis_client.hgetall(key)  # every field, consistent with its signed blob
    _learn(dep, 100, start=200)
    assert dep.next_offset() == 300
    redis_client.delete(key)
    redis_client.hset(key, mapping=old)

    worker = dep.start_worker()
    _assert_refused(dep, worker, [f"{dep.model}/{dep.topic}/0"], "rolled back")
    assert "checkpointed (Kafka)" in worker.log()
    assert worker.terminate() == 0
    assert redis_client.hgetall(key) == old


def test_two_shards_blobs_swapped_are_both_refused(
    make_topic: Any, deploy: Any, redis_client: redis.Redis
) -> None:
    dep = deploy(make_topic(partitions=2))
    _learn(dep, 200, partitions=2)
    first, second = _hash_key(dep, 0), _hash_key(dep, 1)
    rows = redis_client.hgetall(first), redis_client.hgetall(second)
    redis_client.hset(first, mapping=rows[1])  # every field moves with its blob
    redis_client.hset(second, mapping=rows[0])

    worker = dep.start_worker()
    shards = [f"{dep.model}/{dep.topic}/{p}" for p in (0, 1)]
    _assert_refused(dep, worker, shards, "partition: signed 1, expected 0")
    assert worker.terminate() == 0


# -- serving --------------------------------------------------------------------------


def _lookup(dep: Deployment, registry: CollectorRegistry, **security: Any) -> Lookup:
    # The session's services, as the deployment's processes get them (not every session
    # has them in its own environment: testcontainers' ports are the fixtures').
    services = {
        name: dep.env[name]
        for name in ("LIVELEARN_KAFKA__BOOTSTRAP_SERVERS", "LIVELEARN_REDIS__URL")
    }
    with mock.patch.dict(os.environ, services):
        settings = load_settings(
            dep.config_path,
            security={"snapshot_key": SNAPSHOT_KEY, "hash_key": "h" * 32, **security},
        )
    lookup = Lookup(settings, metrics=ServingMetrics(registry))
    lookup.start()
    return lookup


def _refused_count(registry: CollectorRegistry, model: str) -> float:
    value = registry.get_sample_value("livelearn_serving_snapshots_refused_total", {"model": model})
    return value or 0.0


def test_serving_refuses_a_rollback_and_a_moved_blob_and_lists_the_shard(
    make_topic: Any, deploy: Any, redis_client: redis.Redis
) -> None:
    dep = deploy(make_topic(partitions=2))
    _learn(dep, 200, partitions=2)
    key = _hash_key(dep)
    old = redis_client.hgetall(key)
    _learn(dep, 100, start=200, partitions=2)
    registry = CollectorRegistry()
    lookup = _lookup(dep, registry)
    try:
        assert lookup.describe(dep.model)["shards"][0]["next_offset"] == 150
        redis_client.hset(key, mapping=old)  # the older checkpoint, whole
        lookup.reload(dep.model)
        assert _refused_count(registry, dep.model) == 1
        details = lookup.ready()[1]
        assert "rolled back" in details["refused_shards"][f"{dep.model}/{dep.topic}/0"]  # type: ignore[index]
        assert lookup.describe(dep.model)["shards"][0]["next_offset"] == 150  # kept
        # Partition 1's blob under partition 0, fields and all.
        redis_client.hset(key, mapping=redis_client.hgetall(_hash_key(dep, 1)))
        redis_client.hincrby(key, "version", 10)  # newer than anything seen
        lookup.reload(dep.model)
        assert _refused_count(registry, dep.model) == 2
        reason = lookup.ready()[1]["refused_shards"][f"{dep.model}/{dep.topic}/0"]  # type: ignore[index]
        assert "signed" in reason
    finally:
        lookup.close()


def test_a_manifest_moved_or_a_release_shard_replaced_is_refused(
    make_topic: Any, deploy: Any, redis_client: redis.Redis
) -> None:
    dep = deploy(make_topic(partitions=1))
    _learn(dep, 200)
    releases = ReleaseStore(redis_client, dep.store, SNAPSHOT_KEY.encode(), f"ll-{dep.model}")
    first = releases.create(dep.model)
    _learn(dep, 100, start=200)
    second = releases.create(dep.model)
    assert releases.get(dep.model, second).shards[dep.shard()].next_offset == 300
    keys = dep.store.keys

    # A manifest moved to another model (and number): refused wherever it is read.
    redis_client.hset(
        keys.release("other", 1), mapping=redis_client.hgetall(keys.release(dep.model, 1))
    )
    redis_client.zadd(keys.releases("other"), {"1": 1})
    with pytest.raises(ReleaseError, match=f"release 1 of {dep.model!r}, moved here"):
        releases.get("other", 1)
    redis_client.hset(
        keys.release(dep.model, 7), mapping=redis_client.hgetall(keys.release(dep.model, first))
    )
    with pytest.raises(ReleaseError, match="moved here"):
        releases.get(dep.model, 7)

    # The second release's shard replaced by the first's blob.
    field = f"blob:{dep.topic}/0"
    redis_client.hset(
        keys.release(dep.model, second),
        field,
        redis_client.hget(keys.release(dep.model, first), field),  # type: ignore[arg-type]
    )
    with pytest.raises(ReleaseError, match="was altered"):
        releases.get(dep.model, second)

    # Serving pinned to it refuses it, counts it and keeps its state.
    registry = CollectorRegistry()
    lookup = _lookup(dep, registry)
    try:
        releases.promote(dep.model, second)
        wait_for(lambda: _refused_count(registry, dep.model) == 1, 10, "the refusal")
        assert lookup.describe(dep.model)["release"] is None
    finally:
        lookup.close()


# -- key rotation ---------------------------------------------------------------------


def _api_metric(server: Any, name: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _key_ids(dep: Deployment, partitions: int) -> set[str]:
    return {(dep.store.describe(dep.shard(p)) or {}).get("kid", "") for p in range(partitions)}


def test_a_key_rotates_under_traffic_with_nothing_refused_or_lost(
    make_topic: Any, deploy: Any
) -> None:
    partitions = 4
    dep = deploy(
        make_topic(partitions=partitions), checkpoint={"every_events": 40, "every_seconds": 0.5}
    )
    produced: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        """Events at about 40 a second, every partition alike, until the rotation is done."""
        while not stop.is_set():
            batch = phishing_events(n=40, start=40 * len(produced) % 1200)
            produce(dep.bootstrap, dep.topic, encode(batch), partitions=partitions, rate=40)
            produced.append(len(batch))

    producer = threading.Thread(target=traffic)
    producer.start()
    workers = [dep.start_worker(), dep.start_worker()]
    wait_for(
        lambda: all(dep.next_offset(p) > 0 for p in range(partitions)),
        90,
        "a first checkpoint of every shard",
        context=workers[0].tail,
    )
    server = dep.start_server()
    server.wait_ready(90)
    refused_in_logs: list[str] = []

    def roll(env: dict[str, str], drop_single_key: bool = False) -> None:
        """One step of the procedure: the API, then each worker, restarted one at a time
        with ``env``; a new one is up before the old one stops."""
        nonlocal server
        if drop_single_key:
            dep.env.pop("LIVELEARN_SECURITY__SNAPSHOT_KEY", None)
        dep.env.update(env)
        fresh = dep.start_server()
        fresh.wait_ready(90)
        assert _api_metric(server, "livelearn_serving_snapshots_refused_total") == 0
        assert server.terminate() == 0
        server = fresh
        for i, old in enumerate(list(workers)):
            workers[i] = dep.start_worker()
            assert old.terminate() == 0, old.tail()
            refused_in_logs.extend(
                line for line in old.log().splitlines() if "snapshot refused" in line
            )

    # 1. The new key is accepted everywhere; the old one still signs.
    roll(
        {
            "LIVELEARN_SECURITY__SNAPSHOT_KEYS": json.dumps({"k2": NEW_KEY}),
            "LIVELEARN_SECURITY__SNAPSHOT_KEY_ID": "default",
        }
    )
    # 2. The new key signs.
    roll({"LIVELEARN_SECURITY__SNAPSHOT_KEY_ID": "k2"})
    # 3. What the old key signed ages out: every shard is checkpointed again, with k2.
    wait_for(lambda: _key_ids(dep, partitions) == {"k2"}, 120, "every shard signed with k2")
    # 4. The old key is retired.
    roll(
        {
            "LIVELEARN_SECURITY__SNAPSHOT_KEYS": json.dumps({"k2": NEW_KEY}),
            "LIVELEARN_SECURITY__SNAPSHOT_KEY_ID": "k2",
        },
        drop_single_key=True,
    )
    stop.set()
    producer.join()
    per_partition = sum(produced) // partitions
    dep.wait_for_offsets(per_partition, partitions, 120, workers[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the API reloads the last checkpoints
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as resp:
            body = json.loads(resp.read())
        if body["refused_shards"] == {}:
            break
        time.sleep(0.5)
    assert body["refused_shards"] == {}
    assert _api_metric(server, "livelearn_serving_snapshots_refused_total") == 0
    for worker in workers:
        assert worker.terminate() == 0, worker.tail()
        refused_in_logs.extend(
            line for line in worker.log().splitlines() if "snapshot refused" in line
        )
    assert refused_in_logs == []
    assert [dep.stats(p)["events_learned"] for p in range(partitions)] == [
        per_partition
    ] * partitions
    assert _key_ids(dep, partitions) == {"k2"}
    # `livelearn models show` verifies each shard with the keys it has, and says its key id.
    shown = describe_model(
        dep.store, dep.model, SnapshotCodec(Keyring({"k2": NEW_KEY.encode()}, "k2"))
    )
    assert {(s["key_id"], s["signature"]) for s in shown["shards"]} == {("k2", "ok")}
    assert server.terminate() == 0
