"""A single server's keys from before hash tags move to the tagged layout at start-up, on the
real Redis: atomically per shard, idempotently, with two workers racing, and with every
signed checkpoint and release still verifying where it lands."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from livelearn.learners import SnapshotCodec
from livelearn.store._keys import LegacyKeys
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.releases import ReleaseStore

pytestmark = pytest.mark.integration

KEY = b"migration-key-0123456789abcdef0123"
SHARDS = [ShardId("m", "t.x", p) for p in range(3)] + [ShardId("n-2", "t", 0)]


def _to_old_layout(client: Any, store: RedisCheckpointStore, number: int) -> None:
    """Move the keys written by the tagged store back to where the old code kept them."""
    old, new = LegacyKeys(store.keys.prefix), store.keys
    for s in SHARDS:
        client.rename(new.epoch(s.model, s.topic, s.partition), old.epoch(*_parts(s)))
        client.rename(new.shard(s.model, s.topic, s.partition), old.shard(*_parts(s)))
        client.sadd(old.shards(s.model), f"{s.topic}/{s.partition}")
    for model in {s.model for s in SHARDS}:
        client.delete(new.shards(model))
    for name in ("releases", "release_seq", "pin"):
        client.rename(getattr(new, name)("m"), getattr(old, name)("m"))
    client.rename(new.release("m", number), old.release("m", number))


def _parts(s: ShardId) -> tuple[str, str, int]:
    return s.model, s.topic, s.partition


def test_old_keys_move_once_with_two_workers_racing_and_still_verify(
    redis_client: Any, unique_name: str
) -> None:
    store = RedisCheckpointStore(redis_client, unique_name)
    codec = SnapshotCodec(KEY)
    for s in SHARDS:
        store.write(codec, s, store.claim(s)[0], {"p": s.partition}, 10 + s.partition, {"n": 1})
    releases = ReleaseStore(redis_client, store, KEY, unique_name)
    number = releases.create("m")
    releases.promote("m", number)
    epochs = store.epochs(SHARDS)
    _to_old_layout(redis_client, store, number)
    assert store.load(SHARDS[0]) is None and store.shards("m") == []

    moved: list[int] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        moved.append(RedisCheckpointStore(redis_client, unique_name).migrate())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Every old key moved exactly once between the two: 2 per shard, and the release's
    # hash, index, sequence and pin.
    assert sum(moved) == 2 * len(SHARDS) + 4, moved
    assert store.migrate() == 0  # nothing left: idempotent
    left = sorted(k.decode() for k in redis_client.scan_iter(f"{unique_name}:*"))
    assert all(k.startswith(f"{unique_name}:{{") or k == f"{unique_name}:models" for k in left), (
        left
    )

    assert store.epochs(SHARDS) == epochs  # an epoch never goes down
    assert store.shards("m") == SHARDS[:3] and store.models() == ["m", "n-2"]
    for s in SHARDS:
        loaded = store.load(s)
        assert loaded is not None
        assert codec.decode(loaded.blob, loaded.binding()) == {"p": s.partition}
    assert releases.pinned("m") == number and releases.numbers("m") == [number]
    release = releases.get("m", number)  # its manifest still verifies
    assert codec.decode(release.shards[SHARDS[1]].blob, release.shards[SHARDS[1]].binding) == {
        "p": 1
    }
    assert releases.create("m") == number + 1  # the sequence moved with it
    epoch, restored = store.claim(SHARDS[0])
    assert epoch > epochs[0] and restored is not None


def test_a_claim_moves_what_an_old_worker_wrote_after_the_start_up_migration(
    redis_client: Any, unique_name: str
) -> None:
    store = RedisCheckpointStore(redis_client, unique_name)
    codec = SnapshotCodec(KEY)
    shard = SHARDS[0]
    store.write(codec, shard, store.claim(shard)[0], {"v": 1}, 10, {})
    # An old worker still running kept writing to the old layout: a later version there.
    newer = store.load(shard)
    assert newer is not None
    old = LegacyKeys(unique_name)
    row = redis_client.hgetall(store.keys.shard(*_parts(shard)))
    redis_client.hset(old.shard(*_parts(shard)), mapping={**row, b"version": 7, b"next_offset": 70})
    redis_client.set(old.epoch(*_parts(shard)), newer.epoch + 5)
    epoch, restored = store.claim(shard)
    assert epoch > newer.epoch + 5  # above the old worker's epoch: it is fenced out
    assert restored is not None and (restored.version, restored.next_offset) == (7, 70)
    assert redis_client.exists(old.shard(*_parts(shard)), old.epoch(*_parts(shard))) == 0
