"""Where each of livelearn's Redis keys lives: the one place that names them.

Every key of one model carries the model's hash tag, ``{model}``, so that Redis Cluster
keeps them in one slot and a checkpoint (epoch, shard hash, shard index, update channel)
or a release is still written atomically by one script or transaction. Only the set of
model names is global: it is written apart, idempotently (see `store.checkpoints`).

Keys, under the prefix (``redis.key_prefix``)::

    {prefix}:models                                 set of model names (global)
    {prefix}:{{model}}:shards                       set of "topic/partition"
    {prefix}:{{model}}:shard:{topic}:{partition}    hash (blob, next_offset, epoch, ...)
    {prefix}:{{model}}:epoch:{topic}:{partition}    fencing epoch (bumped on claim)
    {prefix}:{{model}}:updates                      update channel (sharded on a cluster)
    {prefix}:{{model}}:release:{n}                  a release's manifest and blobs
    {prefix}:{{model}}:releases                     sorted set of release numbers
    {prefix}:{{model}}:release_seq                  the last release number given
    {prefix}:{{model}}:pin                          the pinned release number
    {prefix}:{{model}}:timeline                     the model's timeline stream

Model names cannot hold braces (``^[a-z0-9][a-z0-9_-]*$``), nor can the prefix, so the
tag is always the model's name. `LegacyKeys` names the layout before hash tags, which the
store migrates from (`RedisCheckpointStore.migrate`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys", "LegacyKeys"]


@dataclass(frozen=True)
class Keys:
    """The keys of one deployment, under ``prefix``.

    Examples
    --------
    >>> keys = Keys("livelearn")
    >>> keys.shard("fraud", "payments", 3)
    'livelearn:{fraud}:shard:payments:3'
    >>> keys.epoch("fraud", "payments", 3)
    'livelearn:{fraud}:epoch:payments:3'
    >>> keys.channel("fraud")
    'livelearn:{fraud}:updates'

    """

    prefix: str

    def models(self) -> str:
        """The set of model names (the one key in no model's slot)."""
        return f"{self.prefix}:models"

    def tag(self, model: str) -> str:
        """The start of every key of ``model``."""
        return f"{self.prefix}:{{{model}}}"

    def shards(self, model: str) -> str:
        """The set of the model's checkpointed shards ("topic/partition")."""
        return f"{self.tag(model)}:shards"

    def shard(self, model: str, topic: str, partition: int) -> str:
        """The hash holding one shard's checkpoint."""
        return f"{self.tag(model)}:shard:{topic}:{partition}"

    def epoch(self, model: str, topic: str, partition: int) -> str:
        """One shard's fencing epoch."""
        return f"{self.tag(model)}:epoch:{topic}:{partition}"

    def channel(self, model: str) -> str:
        """The channel announcing the model's checkpoints, releases and pins."""
        return f"{self.tag(model)}:updates"

    def release(self, model: str, number: int) -> str:
        """The hash of release ``number``."""
        return f"{self.tag(model)}:release:{number}"

    def releases(self, model: str) -> str:
        """The sorted set of the model's release numbers."""
        return f"{self.tag(model)}:releases"

    def release_seq(self, model: str) -> str:
        """The last release number given."""
        return f"{self.tag(model)}:release_seq"

    def pin(self, model: str) -> str:
        """The release serving is pinned to."""
        return f"{self.tag(model)}:pin"

    def timeline(self, model: str) -> str:
        """The model's timeline (a stream beside its checkpoints)."""
        return f"{self.tag(model)}:timeline"


@dataclass(frozen=True)
class LegacyKeys:
    """The layout before hash tags (single servers only), read to migrate from."""

    prefix: str

    def shards(self, model: str) -> str:
        """The old set of a model's shards."""
        return f"{self.prefix}:model:{model}:shards"

    def shard(self, model: str, topic: str, partition: int) -> str:
        """The old hash of a shard's checkpoint."""
        return f"{self.prefix}:shard:{model}:{topic}:{partition}"

    def epoch(self, model: str, topic: str, partition: int) -> str:
        """The old key of a shard's epoch."""
        return f"{self.prefix}:epoch:{model}:{topic}:{partition}"

    def release(self, model: str, number: int) -> str:
        """The old hash of a release."""
        return f"{self.prefix}:release:{model}:{number}"

    def releases(self, model: str) -> str:
        """The old sorted set of release numbers."""
        return f"{self.prefix}:releases:{model}"

    def release_seq(self, model: str) -> str:
        """The old last release number."""
        return f"{self.prefix}:release_seq:{model}"

    def pin(self, model: str) -> str:
        """The old pin."""
        return f"{self.prefix}:pin:{model}"
