"""The checkpoint store on a real Redis server: atomic writes, fencing, announcements."""

from __future__ import annotations

import json

import pytest
import redis

from livelearn import StaleEpochError
from store.checkpoints import RedisCheckpointStore, ShardId

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_client: redis.Redis, unique_name: str) -> RedisCheckpointStore:
    return RedisCheckpointStore(redis_client, prefix=unique_name)


def test_a_stale_epoch_cannot_overwrite_the_new_owners_checkpoint(store) -> None:
    shard = ShardId("m", "t", 0)
    old_epoch, _ = store.claim(shard)
    store.save(shard, old_epoch, b"zombie-1", 10, {"events_learned": 10})
    new_epoch, checkpoint = store.claim(shard)  # a rebalance gives the shard to a new owner
    assert new_epoch == old_epoch + 1
    assert checkpoint is not None and checkpoint.blob == b"zombie-1"
    store.save(shard, new_epoch, b"owner-1", 20, {"events_learned": 20})

    with pytest.raises(StaleEpochError) as info:
        store.save(shard, old_epoch, b"zombie-2", 30, {"events_learned": 30})
    assert info.value.held == old_epoch and info.value.current == new_epoch

    after = store.load(shard)
    assert after is not None
    assert (after.blob, after.next_offset, after.epoch) == (b"owner-1", 20, new_epoch)
    assert after.stats == {"events_learned": 20}


def test_an_unclaimed_shard_refuses_writes(store) -> None:
    with pytest.raises(StaleEpochError):
        store.save(ShardId("m", "t", 1), 1, b"x", 1, {})
    assert store.load(ShardId("m", "t", 1)) is None


def test_save_announces_the_version_and_lists_the_shard(store, redis_client) -> None:
    shard = ShardId("m", "topic.with.dots", 3)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.channel("m"))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    epoch, _ = store.claim(shard)
    assert store.save(shard, epoch, b"a", 5, {}) == 1
    assert store.save(shard, epoch, b"bb", 7, {}) == 2
    messages = [pubsub.get_message(timeout=2) for _ in range(2)]
    payloads = [json.loads(m["data"]) for m in messages if m]
    assert payloads == [
        {"topic": "topic.with.dots", "partition": 3, "next_offset": 5, "version": 1},
        {"topic": "topic.with.dots", "partition": 3, "next_offset": 7, "version": 2},
    ]
    pubsub.close()
    assert store.models() == ["m"]
    assert store.shards("m") == [shard]
    row = store.describe(shard)
    assert row is not None and row["size"] == 2 and row["version"] == 2
