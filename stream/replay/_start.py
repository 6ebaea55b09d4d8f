"""Where a replay's learners start: fresh, from the live checkpoints, or from a release."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Literal

from livelearn.errors import ConfigError
from livelearn.learners import Binding, ModelSpec, SnapshotCodec, load_learner, spec_fingerprint
from livelearn.store.checkpoints import Checkpoint, RedisCheckpointStore, ShardId
from livelearn.store.releases import ReleaseStore
from livelearn.stream.replay._range import ReplayRange

log = logging.getLogger("livelearn.replay")

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
    """Starting checkpoints for ``spec``'s shards.

    Each starts where its source stopped (the checkpoint's or release's next offset), or at
    the range's start when that is later: an event the source learned is never learned
    again. The learners keep their model, counts and drift state, but their metrics start
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
            blob, stats, next_offset = row.blob, row.stats, row.next_offset
            source: Binding | None = row.binding()
        else:
            assert releases is not None
            shard = releases.get(spec.name, int(start)).shards.get(live_id)
            if shard is None:
                continue
            blob, stats, next_offset = shard.blob, shard.stats, shard.next_offset
            source = shard.binding
        if next_offset < first:
            log.warning(
                "the range starts after where the start state stopped: events in between "
                "are not learned",
                extra={
                    "fields": {
                        "partition": f"{tp.topic}/{tp.partition}",
                        "stopped_at": next_offset,
                        "range_start": first,
                    }
                },
            )
        shard_id = ShardId(name, tp.topic, tp.partition)
        found[shard_id] = fresh_metrics(
            codec,
            Checkpoint(shard_id, blob, max(first, next_offset), 0, stats, 0.0, 0, 0),
            source,
        )
    if start == "live" and not found:
        raise ConfigError(f"--start live: model {spec.name!r} has no live checkpoint to start from")
    return found


def fresh_metrics(
    codec: SnapshotCodec, state: Checkpoint, source: Binding | None = None
) -> Checkpoint:
    """``state`` with its learner's metrics started afresh (model, counts, drift kept).

    The blob is verified as bound to ``source`` (default: ``state`` itself; the live
    checkpoint or release shard it was read from), and signed again bound to the new state.
    """
    learner = load_learner(codec, state.blob, source or state.binding())
    learner.reset_metrics()
    fresh = Checkpoint(state.shard, b"", state.next_offset, 0, state.stats, time.time(), 0, 0)
    blob = codec.encode(learner, fresh.binding(), spec_fingerprint(learner.spec))
    return dataclasses.replace(fresh, blob=blob, size=len(blob), kid=codec.keys.active)
