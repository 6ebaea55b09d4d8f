"""What one model serves: its loaded shards, the shards that answer for a key, and their
answers combined into one.

A ``ServedState`` is built whole by a reload and never changed afterwards, so predictions
read it without a lock (see ``serving.lookup``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from livelearn.errors import ModelNotLoaded
from livelearn.learners import (
    Learner,
    ModelSpec,
    Task,
    combine_proba,
    combine_values,
    partition_for_key,
    predicted_class,
)
from livelearn.store.checkpoints import ShardId

__all__ = ["LoadedShard", "ServedState", "combine"]


@dataclass(frozen=True)
class LoadedShard:
    """One shard's learner and the checkpoint (or release entry) it came from."""

    id: ShardId
    learner: Learner
    next_offset: int
    version: int | None  # None for a release's shard
    updated_at: float
    stats: Mapping[str, Any]
    weight: float  # events learned
    name: str = field(init=False)  # "topic/partition"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.id.topic}/{self.id.partition}")


@dataclass(frozen=True)
class ServedState:
    """What one model serves; replaced whole, never changed."""

    spec: ModelSpec
    release: int | None
    shards: tuple[LoadedShard, ...]
    offsets: dict[str, int]
    newest: float  # updated_at of the newest shard; 0.0 when none
    # For a model routed by key: topic -> (partition count, shard by partition).
    routes: dict[str, tuple[int, dict[int, LoadedShard]]]

    @classmethod
    def build(
        cls, spec: ModelSpec, release: int | None, shards: Iterable[LoadedShard]
    ) -> ServedState:
        ordered = tuple(sorted(shards, key=lambda s: s.id))
        routes: dict[str, tuple[int, dict[int, LoadedShard]]] = {}
        for shard in ordered:
            count, by_partition = routes.get(shard.id.topic, (0, {}))
            by_partition[shard.id.partition] = shard
            # Partitions are numbered from 0; a partition never checkpointed still counts.
            routes[shard.id.topic] = (max(count, shard.id.partition + 1), by_partition)
        return cls(
            spec,
            release,
            ordered,
            {s.name: s.next_offset for s in ordered},
            max((s.updated_at for s in ordered), default=0.0),
            routes,
        )

    def answering(
        self, key: str | None, retry_after: float
    ) -> tuple[tuple[LoadedShard, ...], dict[str, int], float]:
        """The shards that answer for ``key``, their next offsets and the newest updated_at.

        For a model routed by key, the key's shard in each topic answers; otherwise every
        shard does.

        Raises
        ------
        ModelNotLoaded
            No shard (or not the key's) is loaded yet; it carries ``retry_after``.

        """
        if not self.shards:
            raise ModelNotLoaded(self.spec.name, "no shard has a checkpoint yet", retry_after)
        if key is not None and self.spec.route_by_key:
            shards = self.routed(key, retry_after)
            offsets = {s.name: s.next_offset for s in shards}
            return shards, offsets, max(s.updated_at for s in shards)
        return self.shards, dict(self.offsets), self.newest

    def routed(self, key: str, retry_after: float) -> tuple[LoadedShard, ...]:
        """The shard of ``key``'s partition in each topic."""
        raw = key.encode()
        out = []
        for topic, (count, by_partition) in self.routes.items():
            partition = partition_for_key(raw, count)
            shard = by_partition.get(partition)
            if shard is None:
                raise ModelNotLoaded(
                    self.spec.name,
                    f"no checkpoint of {topic}/{partition} for key {key!r}",
                    retry_after,
                )
            out.append(shard)
        return tuple(out)


def combine(
    task: Task, shards: Sequence[LoadedShard], x: Mapping[str, Any]
) -> tuple[Any, dict[Any, float] | None]:
    """The shards' joint prediction for ``x``, and its class probabilities (None for
    regression); each shard weighs as much as the events it learned."""
    if task == "regression":
        return combine_values([(s.learner.predict_one(x), s.weight) for s in shards]), None
    if len(shards) == 1:
        # combine_proba of one part, without its allocations (they show in the p99 that
        # bench/bench_lookup.py measures, through the garbage collector); River's dict is
        # fresh, so it is not copied.
        shard = shards[0]
        proba = shard.learner.predict_proba_one(x) if shard.weight > 0 else {}
    else:
        proba = combine_proba([(s.learner.predict_proba_one(x), s.weight) for s in shards])
    return predicted_class(proba), proba
