"""Where a replay's learners start: fresh, from the live checkpoints, or from a release."""

from __future__ import annotations

import time
from typing import Literal

from learners import ModelSpec, SnapshotCodec, load_learner
from livelearn.errors import ConfigError
from store.checkpoints import Checkpoint, RedisCheckpointStore, ShardId
from store.releases import ReleaseStore
from stream.replay._range import ReplayRange

StartFrom = Literal["fresh", "live"] | int  # an int is a release number


def parse_start(text: str) -> StartFrom:
    """``fresh``, ``live`` or ``release:N``.

    >>> parse_start("release:3"), parse_start("fresh")
    (3, 'fresh')
    """
    if text in ("fresh", "live"):
        return text  # type: ignore[return-value]
    kind, _, number = text.partition(":")
    if kind == "release" and number.isdigit():
        return int(number)
    raise ConfigError(f"--start {text!r}: use fresh, live or release:N")


def initial_state(
    spec: ModelSpec,
    start: StartFrom,
    span: ReplayRange,
    codec: SnapshotCodec,
    store: RedisCheckpointStore | None,
    releases: ReleaseStore | None,
    model_name: str | None = None,
) -> dict[ShardId, Checkpoint]:
    """Starting checkpoints for ``spec``'s shards, offsets moved to the range's start.

    The learners keep their model, counts and drift state, but their metrics start
    afresh, so the report scores the replayed events only.
    """
    name = model_name or spec.name
    found: dict[ShardId, Checkpoint] = {}
    if start == "fresh":
        return found
    for tp, (first, _) in span.offsets.items():
        live_id = ShardId(spec.name, tp.topic, tp.partition)
        if start == "live":
            assert store is not None
            row = store.load(live_id)
            if row is None:
                continue
            blob, stats = row.blob, row.stats
        else:
            assert releases is not None
            shard = releases.get(spec.name, int(start)).shards.get(live_id)
            if shard is None:
                continue
            blob, stats = shard.blob, shard.stats
        learner = load_learner(codec, blob)
        learner.reset_metrics()
        blob = codec.encode(learner)
        shard_id = ShardId(name, tp.topic, tp.partition)
        found[shard_id] = Checkpoint(shard_id, blob, first, 0, stats, time.time(), len(blob), 0)
    if start == "live" and not found:
        raise ConfigError(f"--start live: model {spec.name!r} has no live checkpoint to start from")
    return found
