"""The checkpoint store on a real Redis server: atomic writes, fencing, announcements."""

from __future__ import annotations

import json
import socket

import pytest
import redis

from livelearn import ServiceUnavailable, StaleEpochError, VersionConflict
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_client: redis.Redis, unique_name: str) -> RedisCheckpointStore:
    return RedisCheckpointStore(redis_client, prefix=unique_name)


def test_a_stale_epoch_cannot_overwrite_the_new_owners_checkpoint(store) -> None:
    shard = ShardId("m", "t", 0)
    old_epoch, _ = store.claim(shard)
    store.save(shard, old_epoch, b"zombie-1", 10, {"events_learned": 10}, 1)
    new_epoch, checkpoint = store.claim(shard)  # a rebalance gives the shard to a new owner
    assert new_epoch > old_epoch
    assert checkpoint is not None and checkpoint.blob == b"zombie-1"
    store.save(shard, new_epoch, b"owner-1", 20, {"events_learned": 20}, 2)

    with pytest.raises(StaleEpochError) as info:
        store.save(shard, old_epoch, b"zombie-2", 30, {"events_learned": 30}, 3)
    assert info.value.held == old_epoch and info.value.current == new_epoch

    after = store.load(shard)
    assert after is not None
    assert (after.blob, after.next_offset, after.epoch) == (b"owner-1", 20, new_epoch)
    assert after.stats == {"events_learned": 20}


def test_an_epoch_is_never_handed_out_twice_even_after_redis_lost_it(
    store, redis_client, unique_name
) -> None:
    shard = ShardId("m", "t", 0)
    epochs = [store.claim(shard)[0] for _ in range(3)]
    assert epochs == sorted(set(epochs))
    redis_client.delete(store.keys.epoch("m", "t", 0))  # a restart without its data
    with pytest.raises(StaleEpochError) as info:
        store.save(shard, epochs[-1], b"x", 1, {}, 1)
    assert info.value.current is None  # lost: not taken by someone else
    assert store.claim(shard)[0] > epochs[-1]


def test_reclaim_takes_a_lost_claim_back_only_if_nobody_claimed_since(store) -> None:
    shard = ShardId("m", "t", 0)
    assert store.epochs([shard]) == [None]
    mine = store.reclaim(shard, None)  # no epoch at all: taken
    assert mine is not None and store.epochs([shard]) == [mine]
    theirs, _ = store.claim(shard)
    assert store.reclaim(shard, None) is None  # someone claimed it meanwhile
    assert store.reclaim(shard, mine) is None
    assert store.epochs([shard, ShardId("m", "t", 1)]) == [theirs, None]
    assert store.epochs([]) == []


def test_a_redis_that_does_not_answer_raises_service_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.Redis(port=port, retry=None, socket_connect_timeout=1)
    store = RedisCheckpointStore(client, "x")
    shard = ShardId("m", "t", 0)
    calls = [
        lambda: store.claim(shard),
        lambda: store.save(shard, 1, b"x", 1, {}, 1),
        lambda: store.epochs([shard]),
        lambda: store.epochs([]),
        lambda: store.reclaim(shard, None),
    ]
    for call in calls:
        with pytest.raises(ServiceUnavailable, match=f"Redis at localhost:{port}/0 does not"):
            call()
    client.close()


def test_an_unclaimed_shard_refuses_writes(store) -> None:
    with pytest.raises(StaleEpochError):
        store.save(ShardId("m", "t", 1), 1, b"x", 1, {}, 1)
    assert store.load(ShardId("m", "t", 1)) is None


def test_save_announces_the_version_and_lists_the_shard(store, redis_client) -> None:
    shard = ShardId("m", "topic.with.dots", 3)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.channel("m"))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    epoch, _ = store.claim(shard)
    assert store.save(shard, epoch, b"a", 5, {}, 1, "k1") == 1
    assert store.save(shard, epoch, b"bb", 7, {}, 2, "k1") == 2
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
    assert row is not None and row["size"] == 2 and row["version"] == 2 and row["kid"] == "k1"


def test_a_version_not_above_the_stored_one_is_refused_and_nothing_written(store) -> None:
    shard = ShardId("m", "t", 0)
    epoch, _ = store.claim(shard)
    assert store.save(shard, epoch, b"v5", 50, {}, 5) == 5
    for version in (5, 4):
        with pytest.raises(VersionConflict) as info:
            store.save(shard, epoch, b"older", 10, {}, version)
        assert (info.value.version, info.value.stored) == (version, 5)
    after = store.load(shard)
    assert after is not None and (after.blob, after.next_offset, after.version) == (b"v5", 50, 5)
