"""A model's served state read from Redis: its latest checkpoints or a release, each
snapshot's signature and binding verified before it is unpickled.

A refused blob (bad signature, not the checkpoint the store says it is, older than a
version already seen here, unloadable) is logged with its shard and version and counted,
and the same version is not tried again; a refused release is not tried again at all
(releases never change). A shard that disappears from Redis keeps its last state. The
shards refused now are listed by `StateLoader.refused` (the API's /readyz).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from livelearn.errors import ReleaseError, SnapshotError, SnapshotRefused
from livelearn.learners import Binding, Learner, ModelSpec, SnapshotCodec, load_learner
from livelearn.serving._state import LoadedShard, ServedState
from livelearn.serving.metrics import ServingMetrics
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.releases import ReleaseStore

__all__ = ["StateLoader"]

log = logging.getLogger("livelearn.serving")

# The pause between a snapshot's pickle frames while it is unpickled in the reload thread:
# long enough for a thread waiting on the interpreter's lock (the API's event loop, a
# caller's prediction) to wake and take it, short enough to add little to a reload of a
# large tree (bench/bench_api_load.py measures both).
FRAME_PAUSE_SECONDS = 0.0005
# A snapshot at least this large is unpickled with the cyclic garbage collector off, and
# every object then alive is frozen (``gc.freeze``): unpickling a large forest creates
# objects by the million, and the collector's full passes over them hold the interpreter
# for a long time, the other models' answers with it (tests/integration/
# test_large_model_serving.py, bench/bench_bigmodel.py). A frozen state that is replaced
# is freed by reference counting; cyclic garbage alive at a freeze is kept, so smaller
# snapshots, reloaded often, are left to the collector.
FREEZE_BYTES = 8 * 1024 * 1024


class StateLoader:
    """Builds served states from the checkpoint and release stores, counting refusals in
    ``metrics.snapshots_refused``."""

    def __init__(
        self,
        store: RedisCheckpointStore,
        releases: ReleaseStore,
        codec: SnapshotCodec,
        metrics: ServingMetrics,
    ) -> None:
        self._store = store
        self._releases = releases
        self._codec = codec
        self._metrics = metrics
        self._refused: dict[ShardId, tuple[int, float]] = {}
        self._reasons: dict[ShardId, str] = {}
        self._problem = ""  # why the last blob was refused
        # The highest version loaded of each shard: an older one is a rollback, refused.
        self._seen: dict[ShardId, int] = {}
        self._refused_releases: dict[str, int] = {}  # releases are immutable: refuse once

    def refused(self) -> dict[str, str]:
        """The shards whose latest checkpoint is refused now, with why."""
        return {str(s): why for s, why in sorted(self._reasons.items())}

    def latest(self, current: ServedState) -> ServedState | None:
        """The model of ``current`` at its latest checkpoints; None when nothing changed.

        While ``current`` follows the latest checkpoints, only the shards whose version
        changed are loaded again. A release's state is replaced whole.

        Raises
        ------
        redis.RedisError
            Redis does not answer.

        """
        following = current.release is None
        held = {s.id: s for s in current.shards} if following else {}
        ids = self._store.shards(current.spec.name)
        changed = not following
        for shard_id, stamp in zip(ids, self._store.stamps(ids), strict=True):
            old = held.get(shard_id)
            if stamp is None or self._refused.get(shard_id) == stamp:
                continue
            if old is not None and (old.version, old.updated_at) == stamp:
                continue
            fresh = self._load_shard(shard_id)
            if fresh is not None:
                held[shard_id] = fresh
                changed = True
        return ServedState.build(current.spec, None, held.values()) if changed else None

    def release(self, spec: ModelSpec, number: int) -> ServedState | None:
        """Release ``number`` as a state, or None when it is refused (logged and counted,
        now or before).

        Raises
        ------
        redis.RedisError
            Redis does not answer.

        """
        if self._refused_releases.get(spec.name) == number:
            return None
        try:
            release = self._releases.get(spec.name, number)
        except ReleaseError as exc:
            self._refused_releases[spec.name] = number
            self._metrics.snapshots_refused.labels(spec.name).inc()
            log.error(
                "release refused: %s; the current state keeps serving",
                exc,
                extra={"fields": {"model": spec.name, "release": number}},
            )
            return None
        shards = []
        for entry in release.shards.values():
            where = f"{entry.shard} of release {number}"
            learner = self._decode(spec.name, where, entry.blob, entry.binding)
            if learner is None:
                self._refused_releases[spec.name] = number
                return None
            weight = float(entry.stats.get("events_learned", learner.events_learned))
            shards.append(
                LoadedShard(
                    entry.shard,
                    learner,
                    entry.next_offset,
                    None,
                    entry.updated_at,
                    entry.stats,
                    weight,
                )
            )
        return ServedState.build(spec, number, shards)

    def _load_shard(self, shard_id: ShardId) -> LoadedShard | None:
        checkpoint = self._store.load(shard_id)
        if checkpoint is None:
            return None
        where = f"{shard_id} version {checkpoint.version}"
        seen = self._seen.get(shard_id, 0)
        expect = checkpoint.binding()
        learner = self._decode(shard_id.model, where, checkpoint.blob, expect, seen)
        if learner is None:
            self._refused[shard_id] = (checkpoint.version, checkpoint.updated_at)
            self._reasons[shard_id] = self._problem
            return None
        self._seen[shard_id] = checkpoint.version
        self._reasons.pop(shard_id, None)
        return LoadedShard(
            shard_id,
            learner,
            checkpoint.next_offset,
            checkpoint.version,
            checkpoint.updated_at,
            checkpoint.stats,
            float(checkpoint.stats.get("events_learned", learner.events_learned)),
        )

    def _decode(
        self, model: str, where: str, blob: bytes, expect: Binding | None, seen: int = 0
    ) -> Learner | None:
        """The learner in ``blob``, bound to ``expect`` and not older than version ``seen``,
        or None (logged and counted) when the blob is refused."""

        def not_older(header: Mapping[str, Any]) -> None:
            if expect is not None and expect.version < seen:
                raise SnapshotRefused(
                    f"rolled back: version {expect.version} is older than version {seen}, "
                    "already loaded here"
                )

        try:
            with _collector_held(len(blob)):
                return load_learner(self._codec, blob, expect, not_older, FRAME_PAUSE_SECONDS)
        except SnapshotError as exc:
            problem = str(exc)
        self._problem = problem
        self._metrics.snapshots_refused.labels(model).inc()
        log.error(
            "snapshot refused: %s %s; the last good state keeps serving",
            where,
            problem,
            extra={"fields": {"model": model, "snapshot": where}},
        )
        return None


@contextlib.contextmanager
def _collector_held(size: int) -> Iterator[None]:
    """Unpickle a snapshot of ``size`` bytes with the collector off and freeze what it made
    (`FREEZE_BYTES`); a smaller one as is. Loads are serialized by the lookup's reload lock."""
    if size < FREEZE_BYTES or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
