"""The Redis store that the worker side writes and the serving side reads.

- `store.checkpoints`: one checkpoint per (model, topic, partition), written atomically
  with its fencing epoch, and the update channel that announces each write;
- `store.releases`: numbered, signed freezes of a model's shards, and which one is served;
- `store.connection`: Redis clients from settings: one server, Sentinel or Redis Cluster;
- `store._keys`: every key's name, tagged with its model so a model's keys share a slot.

It imports neither `stream` nor `serving`; both import it.
"""

from __future__ import annotations

from livelearn.store.checkpoints import Checkpoint, CheckpointStore, RedisCheckpointStore, ShardId
from livelearn.store.connection import checkpoint_store, connect_redis, redis_client
from livelearn.store.releases import ReleaseStore

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "RedisCheckpointStore",
    "ReleaseStore",
    "ShardId",
    "checkpoint_store",
    "connect_redis",
    "redis_client",
]
