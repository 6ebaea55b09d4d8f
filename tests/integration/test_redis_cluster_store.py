"""The store on a real Redis Cluster (3 masters, 3 replicas): every shard's atomic write in
one slot, fencing, the update channel (sharded), the models list, resets and releases;
and the WAIT that each checkpoint does before Kafka's offsets may follow it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from redis.cluster import ClusterPubSub, RedisCluster

from livelearn.errors import NotReplicated, StaleEpochError
from livelearn.settings import Settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.connection import checkpoint_store, redis_client
from livelearn.store.releases import ReleaseStore

pytestmark = pytest.mark.integration

KEY = b"cluster-store-key-0123456789abcdef"


@pytest.fixture
def client(redis_cluster: Any) -> Any:
    settings = Settings(redis={"url": redis_cluster.url})
    made = redis_client(settings)
    assert isinstance(made, RedisCluster)
    yield made
    made.close()


@pytest.fixture
def store(client: RedisCluster, unique_name: str) -> RedisCheckpointStore:
    return RedisCheckpointStore(client, unique_name)


def test_the_url_makes_a_cluster_client_and_the_store_waits_for_a_replica(
    redis_cluster: Any, unique_name: str
) -> None:
    settings = Settings(redis={"url": redis_cluster.url, "key_prefix": unique_name})
    store = checkpoint_store(settings, redis_client(settings))
    assert store.cluster and store.wait_replicas() == 1
    shard = ShardId("m", "t", 0)
    epoch, _ = store.claim(shard)
    assert store.save(shard, epoch, b"x", 1, {}, 1) == 1  # acknowledged by its replica
    store.client.close()


def test_models_keep_their_keys_in_one_slot_each(client, store) -> None:
    """Each model's keys hash to one slot; models land on different masters."""
    models = [f"m{i}" for i in range(12)]
    slots = {}
    for model in models:
        shard = ShardId(model, "topic.a", 3)
        keys = [
            store.keys.epoch(model, "topic.a", 3),
            store.keys.shard(model, "topic.a", 3),
            store.keys.shards(model),
            store.keys.channel(model),
            store.keys.release(model, 1),
            store.keys.pin(model),
            store.keys.timeline(model),
        ]
        assert len({client.keyslot(k) for k in keys}) == 1, keys
        slots[model] = client.keyslot(keys[0])
        epoch, _ = store.claim(shard)
        store.save(shard, epoch, f"blob-{model}".encode(), 7, {"events_learned": 7}, 1)
    owners = {client.get_node_from_key(store.keys.tag(m)).name for m in models}
    assert len(owners) > 1  # the models spread over the masters: writes cross no slot
    assert store.models() == sorted(models)
    shards = [ShardId(m, "topic.a", 3) for m in models]
    assert store.versions(shards) == [1] * len(models)
    assert [s and s[0] for s in store.stamps(shards)] == [1] * len(models)
    assert None not in store.epochs(shards)  # one MGET per slot


def test_fencing_and_reclaim_on_a_cluster(store) -> None:
    shard = ShardId("m", "t", 0)
    old_epoch, _ = store.claim(shard)
    store.save(shard, old_epoch, b"zombie-1", 10, {"events_learned": 10}, 1)
    new_epoch, restored = store.claim(shard)
    assert new_epoch > old_epoch and restored is not None and restored.blob == b"zombie-1"
    store.save(shard, new_epoch, b"owner-2", 20, {"events_learned": 20}, 2)
    with pytest.raises(StaleEpochError) as info:
        store.save(shard, old_epoch, b"zombie-2", 30, {}, 3)
    assert info.value.current == new_epoch
    assert store.reclaim(shard, old_epoch) is None
    taken = store.reclaim(shard, new_epoch)
    assert taken is not None and taken > new_epoch
    loaded = store.load(shard)
    assert loaded is not None and (loaded.blob, loaded.version) == (b"owner-2", 2)


def test_a_checkpoint_is_announced_on_the_models_sharded_channel(client, store) -> None:
    shard = ShardId("m", "t", 1)
    pubsub = client.pubsub()
    assert isinstance(pubsub, ClusterPubSub)
    pubsub.ssubscribe(store.channel("m"))
    epoch, _ = store.claim(shard)
    store.save(shard, epoch, b"a", 5, {}, 1)
    deadline = time.monotonic() + 10
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.5)
    pubsub.close()
    assert message is not None and message["type"] == "smessage"
    assert json.loads(message["data"]) == {
        "topic": "t",
        "partition": 1,
        "next_offset": 5,
        "version": 1,
    }


def test_delete_model_fences_its_owners_and_forgets_it(store) -> None:
    shards = [ShardId("gone", "t", p) for p in range(3)]
    epochs = []
    for shard in shards:
        epoch, _ = store.claim(shard)
        store.save(shard, epoch, b"x", 1, {}, 1)
        epochs.append(epoch)
    keep = ShardId("kept", "t", 0)
    store.save(keep, store.claim(keep)[0], b"y", 1, {}, 1)
    assert store.delete_model("gone") == shards
    assert store.models() == ["kept"] and store.shards("gone") == []
    with pytest.raises(StaleEpochError):
        store.save(shards[0], epochs[0], b"zombie", 2, {}, 2)


def test_a_crash_between_the_checkpoint_and_the_models_list_is_repaired_by_a_claim(
    client, store
) -> None:
    shard = ShardId("m", "t", 0)
    store.save(shard, store.claim(shard)[0], b"x", 1, {}, 1)
    client.srem(store.keys.models(), "m")  # as if the process died before its SADD
    assert store.models() == []
    RedisCheckpointStore(client, store.keys.prefix).claim(shard)  # the next owner
    assert store.models() == ["m"]


def test_releases_on_a_cluster(client, store) -> None:
    from livelearn.learners import SnapshotCodec

    codec = SnapshotCodec(KEY)
    for p in range(2):
        shard = ShardId("m", "t", p)
        store.write(codec, shard, store.claim(shard)[0], {"w": p}, 10 + p, {"events_learned": 5})
    releases = ReleaseStore(client, store, KEY, store.keys.prefix)
    first = releases.create("m", note="one")
    second = releases.create("m")
    release = releases.get("m", first)
    assert sorted(release.shards) == [ShardId("m", "t", 0), ShardId("m", "t", 1)]
    assert codec.decode(release.shards[ShardId("m", "t", 1)].blob) == {"w": 1}
    releases.promote("m", second)
    assert releases.pinned("m") == second
    assert releases.rollback("m") == first and releases.pinned("m") == first
    releases.follow("m")
    assert releases.pinned("m") is None and releases.numbers("m") == [first, second]


def test_a_wait_that_times_out_raises_with_the_checkpoint_written(
    redis_client: Any, unique_name: str
) -> None:
    """On a lone server nobody acknowledges: the write stands and the caller is told."""
    store = RedisCheckpointStore(redis_client, unique_name, wait_replicas=1, wait_timeout_ms=100)
    shard = ShardId("m", "t", 0)
    epoch, _ = store.claim(shard)
    with pytest.raises(NotReplicated) as info:
        store.save(shard, epoch, b"x", 5, {}, 1)
    assert (info.value.version, info.value.acked, info.value.wanted) == (1, 0, 1)
    loaded = store.load(shard)
    assert loaded is not None and loaded.version == 1 and store.models() == ["m"]
    lone = RedisCheckpointStore(redis_client, unique_name)
    assert lone.wait_replicas() == 0  # the default on a server with no replica
