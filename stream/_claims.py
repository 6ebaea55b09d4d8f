"""Claiming a partition's shards: each shard's fencing epoch is bumped, its last
checkpoint restored (or a new one placed where its spec starts), and the partition
sought to where its shards resume.

The claims run in the worker's loop, not in the rebalance callbacks (stream/worker.py):
a Redis or Kafka failure here is retried instead of lost.
"""

from __future__ import annotations

import logging
import time

from kafka import TopicPartition
from kafka.errors import KafkaError

from livelearn.errors import ServiceUnavailable, SnapshotError, SnapshotRefused
from livelearn.learners import (
    Learner,
    ModelSpec,
    StartPosition,
    load_learner,
    spec_changes,
    spec_fingerprint,
)
from livelearn.learners.snapshot import LEGACY_FORMAT
from livelearn.store.checkpoints import Checkpoint, ShardId
from livelearn.stream._checkpointing import Checkpointing
from livelearn.stream._shard import Partition, Shard, names

log = logging.getLogger("livelearn.worker")


class Claims(Checkpointing):
    """Claims and restores of assigned partitions, and the end of revoked ones."""

    def _flush_released(self) -> None:
        """Save the pending shards of revoked partitions; forget those partitions once an
        assignment has come that does not give them back."""
        for tp, (part, at) in list(self._released.items()):
            self._save_revoked(part)  # nothing is written while Redis does not answer
            if tp in self._pending or at == self._assignments:
                continue  # assigned back (its shards may be kept), or no assignment yet
            del self._released[tp]
            unsaved = [str(s.id) for s in part.shards if s.pending]
            if unsaved:
                log.warning(
                    "revoked shards not saved: their new owner re-learns their events since "
                    "their last checkpoint",
                    extra={"fields": {"shards": unsaved}},
                )

    def _claim_pending(self) -> None:
        """Claim and restore each assigned partition's shards, seek it to where they resume
        and let it be fetched. A failure leaves the rest pending, retried later."""
        started = time.perf_counter()
        claimed = []
        for tp in sorted(self._pending):
            try:
                found = self._claim(tp)
            except ServiceUnavailable as exc:
                self._store_failed(exc)
                break
            except KafkaError as exc:
                delay = self._claim_backoff.next_delay()
                self._claim_retry_at = time.monotonic() + delay
                log.warning(
                    "start offsets of %s/%s not found, retrying in %.1f s: %s",
                    tp.topic,
                    tp.partition,
                    delay,
                    exc,
                )
                break
            if found is None:  # Redis stopped answering while revoked shards were saved
                break
            part, pins = found
            with self._assigning:
                del self._pending[tp]
                self._released.pop(tp, None)
                self._partitions[tp] = part
            self._claim_backoff.reset()
            for shard in pins:
                self._checkpoint(part, shard, "start")
            claimed.append(tp)
        if claimed:
            self._sync_pause()
            log.info(
                "partitions claimed",
                extra={
                    "fields": {
                        "partitions": names(claimed),
                        "seconds": round(time.perf_counter() - started, 6),
                    }
                },
            )

    def _claim(self, tp: TopicPartition) -> tuple[Partition, list[Shard]] | None:
        """Claim the shards of ``tp`` and seek it; the partition, with the new shards whose
        start is to be checkpointed. None when Redis failed while saving revoked shards."""
        kept: dict[ShardId, Shard] = {}
        if tp in self._released:
            old = self._released[tp][0]
            self._save_revoked(old)
            if self._redis.active:
                return None
            kept = {shard.id: shard for shard in old.shards}
        part = Partition(tp, self._decoders[tp.topic], [])
        if self._ledger is not None:  # a KafkaError here is retried like an offset lookup
            part.floors = self._ledger.floors(tp)
        if tp in self._released:
            for model, floor in self._released[tp][0].floors.items():
                part.floors[model] = max(floor, part.floors.get(model, floor))
        for spec in self._specs_by_topic.get(tp.topic, []):
            self._restore(part, spec, kept.get(ShardId(spec.name, tp.topic, tp.partition)))
        self._store_answered()
        pins = self._start_new_shards(part)
        offsets = [shard.next_offset for shard in part.shards]
        if offsets:
            # Each shard skips what it has learned: adding a model never moves another one.
            self._consumer.seek(tp, min(offsets))
        return part, pins

    def _restore(self, part: Partition, spec: ModelSpec, previous: Shard | None = None) -> None:
        """Claim one shard and load its checkpoint; ``previous``, this worker's learner of
        it from before a revocation, is kept when the store holds exactly what it saved."""
        shard_id = ShardId(spec.name, part.tp.topic, part.tp.partition)
        epoch, checkpoint = self._store.claim(shard_id)
        stamp = None if checkpoint is None else (checkpoint.epoch, checkpoint.version)
        if previous is not None and not previous.pending and previous.based_on == stamp:
            previous.epoch = epoch
            previous.version = max(previous.version, part.floors.get(spec.name, (0, 0))[0])
            part.shards.append(previous)
            log.info(
                "shard kept",
                extra={
                    "fields": {
                        "shard": str(shard_id),
                        "epoch": epoch,
                        "next_offset": previous.next_offset,
                    }
                },
            )
            return
        floor = part.floors.get(spec.name, (0, 0))
        version = max(floor[0], self._versions_seen.get(shard_id, 0))
        if checkpoint is None:
            if version:
                log.warning(
                    "shard %s has no checkpoint, but version %d of it was checkpointed (Kafka's "
                    "committed record, or this worker): it starts afresh as after `livelearn "
                    "models reset`; if nobody reset it, its checkpoint was deleted",
                    shard_id,
                    version,
                    extra={"fields": {"shard": str(shard_id), "version": version}},
                )
            learner, next_offset = Learner(spec), -1  # placed by `_start_new_shards`
            base_blob = self._codec.encode(learner)
        else:
            base_blob = checkpoint.blob
            try:
                learner = load_learner(
                    self._codec,
                    checkpoint.blob,
                    checkpoint.binding(),
                    lambda _: self._check_not_rolled_back(checkpoint, floor),
                )
            except SnapshotError as exc:
                self._metrics.snapshots_refused.labels(spec.name).inc()
                log.error(
                    "snapshot refused, shard not loaded: %s",
                    exc,
                    extra={"fields": {"shard": str(shard_id), "version": checkpoint.version}},
                )
                part.held[shard_id] = floor[1] or checkpoint.next_offset
                return
            version = max(version, checkpoint.version)
            self._versions_seen[shard_id] = version
            if spec_fingerprint(learner.spec) != spec_fingerprint(spec):
                self._refuse_changed_spec(part, shard_id, learner.spec, spec, checkpoint)
                return
            next_offset = checkpoint.next_offset
        stats = learner.stats()
        part.shards.append(
            Shard(
                shard_id,
                spec,
                learner,
                self._sanitizers[spec.name],
                epoch,
                next_offset,
                base_blob=base_blob,
                checkpointed_offset=next_offset,
                based_on=stamp,
                reported_learned=stats["events_learned"],
                reported_scored=learner.events_only_scored,
                reported_drift=stats["drift_detections"],
                version=version,
            )
        )
        if checkpoint is not None and checkpoint.blob[len(b"LLSNAP")] == LEGACY_FORMAT:
            part.shards[-1].pending = max(part.shards[-1].pending, 1)  # rewritten in format 2
            log.warning(
                "format-1 snapshot loaded (security.accept_legacy_snapshots): it is written "
                "again, signed and bound, at the shard's next checkpoint",
                extra={"fields": {"shard": str(shard_id)}},
            )
        if checkpoint is not None:
            log.info(
                "shard restored",
                extra={
                    "fields": {"shard": str(shard_id), "epoch": epoch, "next_offset": next_offset}
                },
            )

    def _check_not_rolled_back(self, checkpoint: Checkpoint, floor: tuple[int, int]) -> None:
        """Refuse a checkpoint older than one known to have been written: Kafka's committed
        record of the shard (``floor``) or a version this process has seen. With
        ``security.accept_rollback`` it is only logged.

        Raises
        ------
        SnapshotRefused
            The checkpoint is older (its version or its next offset).

        """
        seen = self._versions_seen.get(checkpoint.shard, 0)
        newest = max(floor[0], seen)
        if checkpoint.version >= newest and checkpoint.next_offset >= floor[1]:
            return
        problem = (
            f"rolled back: the store holds version {checkpoint.version} up to offset "
            f"{checkpoint.next_offset}, but version {newest} up to offset {floor[1]} was "
            f"checkpointed ({'Kafka' if floor[0] >= seen else 'this worker'})"
        )
        if self._settings.security.accept_rollback:
            log.warning(
                "%s; accepted (security.accept_rollback): its events are learned again",
                problem,
                extra={"fields": {"shard": str(checkpoint.shard)}},
            )
            return
        raise SnapshotRefused(
            f"{problem}; restore the newer checkpoint (or a release), or set "
            "security.accept_rollback: true for one start if Redis was restored from an "
            "older backup on purpose"
        )

    def _start_new_shards(self, part: Partition) -> list[Shard]:
        """Place each new shard (no checkpoint) where its spec's ``start`` says: the
        partition's first offset, its end, or the first offset at or after a time.

        Returns the new shards that do not start at the beginning: they are checkpointed
        at once, so that a restart resumes them there instead of looking again.
        """
        pins = []
        found: dict[StartPosition, int] = {}
        for shard in part.shards:
            if shard.next_offset >= 0:
                continue
            start = shard.spec.start or self._settings.kafka.auto_offset_reset
            if start not in found:
                found[start] = self._start_offset(part.tp, start)
            shard.next_offset = found[start]
            if start != "earliest":
                shard.pending = max(shard.pending, 1)
                pins.append(shard)
            log.info(
                "shard started fresh",
                extra={
                    "fields": {
                        "shard": str(shard.id),
                        "epoch": shard.epoch,
                        "start": start if isinstance(start, str) else start.isoformat(),
                        "next_offset": shard.next_offset,
                    }
                },
            )
        return pins

    def _start_offset(self, tp: TopicPartition, start: StartPosition) -> int:
        """The offset ``start`` names on ``tp`` now (a Kafka round trip)."""
        if start == "earliest":
            return int(self._consumer.beginning_offsets([tp])[tp])
        if not isinstance(start, str):
            at = self._consumer.offsets_for_times({tp: int(start.timestamp() * 1000)}).get(tp)
            if at is not None:
                return int(at.offset)
        return int(self._consumer.end_offsets([tp])[tp])  # latest, or no event since then

    def _refuse_changed_spec(
        self,
        part: Partition,
        shard_id: ShardId,
        restored: ModelSpec,
        configured: ModelSpec,
        checkpoint: Checkpoint,
    ) -> None:
        """Hold a shard whose checkpoint was learned under another spec (reported by /readyz)."""
        changed = ", ".join(spec_changes(restored, configured))
        self._metrics.spec_mismatches.labels(configured.name).inc()
        log.error(
            "model %r: the configured spec changes %s from the checkpointed one, shard %s not "
            "loaded; to train the model afresh with the new spec run `livelearn models reset "
            "%s --yes` and restart the workers, or restore the previous spec to resume it",
            configured.name,
            changed,
            shard_id,
            configured.name,
            extra={"fields": {"shard": str(shard_id), "version": checkpoint.version}},
        )
        part.held[shard_id] = checkpoint.next_offset
