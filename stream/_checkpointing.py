"""A shard's checkpoints and its fencing: writing model state with the offset it covers,
committing Kafka's offsets after, and what happens when the store no longer holds the
shard's claim.

Model state and offsets are written together, fenced by the shard's epoch
(store/checkpoints.py): after a crash at any point every event's effect is in the model
exactly once, and a worker that lost a shard can no longer overwrite it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from livelearn.errors import (
    DeadLetterError,
    InvalidEvent,
    NotReplicated,
    ServiceUnavailable,
    StaleEpochError,
    VersionConflict,
)
from livelearn.learners import Binding, stats_digest
from livelearn.stream._reporting import Reporting
from livelearn.stream._shard import Partition, Shard, Trigger

log = logging.getLogger("livelearn.worker")

# How often the loop checks that Redis answers and still holds each live shard's claim
# (one MGET): the bound on how long an idle worker takes to see a Redis that restarted.
_PROBE_S = 5.0
# The least time between two warnings that checkpoints are deferred: a worker whose
# checkpoints cost about their share would otherwise warn at each pass of the loop.
_STRETCH_LOG_S = 60.0


class Checkpointing(Reporting):
    """Checkpoints, offset commits, and the shards whose claim was lost."""

    def _checkpoint_due(self, now: float) -> None:
        """Checkpoint the shards due by time, the longest waiting first, as far as the
        budget of the learning thread's time allows (`_may_checkpoint`)."""
        if self._redis.active:
            return  # retried by `_tend` once Redis answers again
        due = sorted(
            (
                (shard.last_checkpoint, i, part, shard)
                for i, part in enumerate(list(self._partitions.values()))
                for shard in list(part.shards)
                if shard.pending > 0
                and now - shard.last_checkpoint >= shard.spec.checkpoint.every_seconds
            ),
            key=lambda due: due[:2],
        )
        written: dict[int, Partition] = {}
        for _, i, part, shard in due:
            if not self._may_checkpoint():
                break  # the rest wait, and keep their place: they have waited longest
            if any(s is shard for s in part.shards) and self._checkpoint(part, shard, "time"):
                written[i] = part
        self._commit(written.values())

    def _may_checkpoint(self) -> bool:
        """True when a checkpoint due by count or by time may run now: checkpoints have not
        taken more than ``checkpoint.max_share`` of the learning thread (stream/_budget.py).
        Logs when the cadence starts to stretch (at most once a `_STRETCH_LOG_S`), and
        when it is back."""
        budget = self._budget
        if budget.allows():
            if self._stretched and budget.deferred_since is None:
                self._stretched = False
                if self._stretch_logged:
                    log.info("checkpoints back at their cadence: they fit checkpoint.max_share")
            return True
        if not self._stretched:
            self._stretched = True
            now = time.monotonic()
            self._stretch_logged = now - self._stretch_logged_at >= _STRETCH_LOG_S
            if self._stretch_logged:
                self._stretch_logged_at = now
                log.warning(
                    "checkpoints deferred: they took more than checkpoint.max_share (%.2f) of "
                    "the learning thread, so the next waits %.1f s; the cadence stretches "
                    "past checkpoint.every_seconds and every_events "
                    "(livelearn_checkpoint_interval_seconds), never skipping or repeating an "
                    "event",
                    budget.max_share,
                    budget.wait(),
                )
        return False

    def _write_checkpoints(self, trigger: Trigger, due: Callable[[Shard], bool]) -> list[Partition]:
        """Checkpoint every live shard for which ``due`` holds; the partitions written to."""
        written = []
        for part in list(self._partitions.values()):
            wrote = False
            for shard in list(part.shards):
                if due(shard):
                    wrote = self._checkpoint(part, shard, trigger) or wrote
            if wrote:
                written.append(part)
        return written

    def _checkpoint(self, part: Partition, shard: Shard, trigger: Trigger) -> bool:
        """Write one shard's checkpoint; True if written.

        While Redis does not answer nothing is written: the shard keeps its state and its
        pending events in memory, and is saved once Redis is back (a checkpoint lands
        whole or not at all). A write refused for a stale epoch goes to `_refused`.
        """
        if self._redis.active:
            return False
        if part.tp in self._undelivered:
            # Dead letters must be durable before a checkpoint moves past them.
            if not self._dead_letters.active:  # in an outage, `_tend` retries
                self._deliver_dead_letters()
            if part.tp in self._undelivered:
                return False
        started = time.perf_counter()
        stats = shard.learner.stats()  # first: it trims the rolling windows the blob holds
        event_ms = _last_event_ms(part, shard)
        if event_ms is None:
            event_ms = shard.last_event_ms
        try:
            blob, version = self._save(shard, stats, event_ms)
        except ServiceUnavailable as exc:
            self._store_failed(exc)
            return False
        except StaleEpochError as exc:
            self._store_answered()
            if self._partitions.get(part.tp) is part:
                self._refused(part, shard, exc.current)
            else:  # revoked: the new owner has claimed it and restores its last checkpoint
                log.info(
                    "revoked shard not saved: its new owner claimed it first and re-learns "
                    "its last %d events",
                    shard.pending,
                    extra={"fields": {"shard": str(shard.id)}},
                )
            return False
        except VersionConflict as exc:  # the stored version moved under this owner's epoch
            self._store_answered()
            log.error(
                "checkpoint refused, shard held at its last checkpoint: %s",
                exc,
                extra={"fields": {"shard": str(shard.id)}},
            )
            if any(s is shard for s in part.shards):
                self._hold(part, shard, shard.checkpointed_offset)
            return False
        finally:  # a checkpoint written or not took the learning thread's time
            elapsed = time.perf_counter() - started
            self._budget.spend(elapsed)
            if trigger in ("events", "time"):
                self._budget.deferred_since = None
        self._store_answered()
        now = time.monotonic()
        interval = now - shard.last_checkpoint
        shard.base_blob = blob
        shard.since_base.clear()
        shard.checkpointed_offset = shard.next_offset
        shard.last_event_ms = event_ms
        shard.based_on = (shard.epoch, version)
        shard.version = version
        self._versions_seen[shard.id] = version
        part.floors[shard.id.model] = (version, shard.next_offset)
        shard.pending = 0
        shard.last_checkpoint = now
        self._report_checkpoint(part, shard, trigger, len(blob), stats, elapsed, interval)
        return True

    def _save(self, shard: Shard, stats: dict[str, Any], event_ms: int | None) -> tuple[bytes, int]:
        """Sign ``shard``'s state as its next version, bound to what the checkpoint says,
        and write it with its timeline entry (``event_ms``: the event time of the last event
        it covers); the blob and its version. A store that holds a later version (a
        `livelearn models reset` keeps the count) is answered with one above it."""
        version = shard.version + 1
        for _ in range(2):
            binding = Binding(
                shard.id.model,
                shard.id.topic,
                shard.id.partition,
                shard.next_offset,
                shard.epoch,
                version,
                stats_digest(stats),
            )
            blob = self._codec.encode(shard.learner, binding, shard.fingerprint)
            try:
                self._store.save(
                    shard.id,
                    shard.epoch,
                    blob,
                    shard.next_offset,
                    stats,
                    version,
                    self._codec.keys.active,
                    event_ms=event_ms,
                    since=shard.checkpointed_offset,
                )
            except VersionConflict as exc:
                log.warning("%s; signing version %d", exc, exc.stored + 1)
                version = exc.stored + 1
                continue
            except NotReplicated as exc:
                # Written, but a failover now could lose it: counted, logged, and Kafka's
                # offsets wait for a later checkpoint that a replica acknowledges.
                self._metrics.unreplicated.labels(shard.id.model).inc()
                if shard.replicated:
                    log.warning("%s", exc, extra={"fields": {"shard": str(shard.id)}})
                shard.replicated = False
                return blob, version
            if not shard.replicated:
                log.info(
                    "checkpoint acknowledged by a replica again; offset commits resume",
                    extra={"fields": {"shard": str(shard.id)}},
                )
            shard.replicated = True
            return blob, version
        raise VersionConflict(str(shard.id), version, version)  # moved twice: held

    def _save_pending(self) -> None:
        """Checkpoint every live shard with pending events, and commit after."""
        self._commit(self._write_checkpoints("retry", lambda s: s.pending > 0))

    def _save_revoked(self, part: Partition) -> None:
        """Checkpoint the pending shards of a revoked partition. The save is fenced: if the
        new owner claimed a shard first it is refused, and the new owner re-learns."""
        for shard in list(part.shards):
            if shard.pending:
                self._checkpoint(part, shard, "revoke")

    def _deliver_dead_letters(self) -> None:
        """Make the dead letters sent so far durable (`DeadLetterSink.flush`).

        When some are not acknowledged after the sink's retries, the dead-letter topics are
        in an outage (`Outage`): the partitions of those letters are paused and not
        checkpointed past them, the sink keeps them, and `_tend` flushes again on the
        outage's backoff until they are delivered, or past ``outage.timeout_s`` the worker
        exits (69) to resume from its checkpoints, sending them again.
        """
        try:
            self._dlq.flush()
        except DeadLetterError as exc:
            for topic, _, _ in exc.sources:
                self._metrics.dead_letter_failures.labels(topic).inc()
            self._undelivered = {TopicPartition(t, p) for t, p, _ in exc.sources}
            self._dead_letters.failed(exc)
            self._sync_pause()  # those partitions, whichever they are now
            return
        self._undelivered.clear()
        if self._dead_letters.active:
            self._dead_letters.succeeded()
            self._sync_pause()

    def _commit(self, parts: Iterable[Partition], wait: bool = False) -> None:
        """Commit Kafka offsets (for lag monitoring; the checkpoints are the truth).

        In the loop and on revoke the commit is asynchronous: a synchronous one waits for a
        broker round trip, time the loop would otherwise spend learning many events, and
        is refused inside a rebalance listener. On shutdown it waits, so the group sees
        the final offsets.
        """
        offsets = {}
        for part in parts:
            if not all(s.replicated for s in part.shards):
                continue  # not past a checkpoint that a failover could lose
            offset = part.commit_offset()
            if offset is not None:
                record = (
                    "" if self._ledger is None else self._ledger.codec.record(part.tp, part.floors)
                )
                offsets[part.tp] = OffsetAndMetadata(offset, record, -1)
        if not offsets:
            return
        try:
            if wait:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=_log_commit_failure)
        except Exception as exc:  # a commit during a rebalance may fail; harmless here
            log.warning("offset commit failed: %s", exc)

    def _probe(self) -> bool:
        """Ask Redis for every live shard's epoch: True when it answers. A shard whose claim
        Redis no longer holds (a restart that lost data, another owner) goes to `_refused`
        without waiting for its next checkpoint."""
        live = [(part, shard) for part in self._partitions.values() for shard in part.shards]
        try:
            epochs = self._store.epochs([shard.id for _, shard in live])
        except ServiceUnavailable as exc:
            self._store_failed(exc)
            return False
        self._next_probe = time.monotonic() + _PROBE_S
        self._store_answered()
        for (part, shard), epoch in zip(live, epochs, strict=True):
            if epoch != shard.epoch and any(s is shard for s in part.shards):
                self._refused(part, shard, epoch)
        return True

    def _refused(self, part: Partition, shard: Shard, current: int | None) -> None:
        """The store no longer holds ``shard``'s claim: a save was refused, or the probe saw
        another epoch. Either way it is counted, logged and never silently dropped.

        Epochs never repeat (`store.checkpoints`), so no epoch, or an older one, means
        Redis lost the claim (a restart without its data, or from an older snapshot) and
        nobody has claimed the shard since: the worker takes it back and writes the state
        it holds, which has every event up to its next offset exactly once. A newer epoch
        means another worker, or a model reset, claimed it: the shard stops learning
        (/readyz lists it) and waits to be revoked; if the group still assigns the
        partition here after `_fence_grace_s`, `_reclaim_fenced` claims it again.
        """
        if current is None or current < shard.epoch:
            try:
                epoch = self._store.reclaim(shard.id, current)
            except ServiceUnavailable as exc:
                self._store_failed(exc)
                return  # the next probe finds the claim missing and tries again
            if epoch is not None:
                self._metrics.stale_epochs.labels(shard.id.model).inc()
                log.warning(
                    "Redis lost the claim on shard %s (epoch %d, found %s: restarted without "
                    "its data?); claimed it again with epoch %d and writes its state, up to "
                    "offset %d, from memory",
                    shard.id,
                    shard.epoch,
                    current,
                    epoch,
                    shard.next_offset,
                    extra={"fields": {"shard": str(shard.id)}},
                )
                shard.epoch = epoch
                shard.pending = max(shard.pending, 1)
                self._checkpoint(part, shard, "reclaim")
                return
            current = None  # claimed by someone else meanwhile
        self._metrics.stale_epochs.labels(shard.id.model).inc()
        part.shards = [s for s in part.shards if s is not shard]
        part.fenced[shard.id] = time.monotonic()
        log.error(
            "shard %s fenced out: its epoch %d was replaced (%s) by another worker or a model "
            "reset; it stops learning, and is claimed again from its checkpoint in %.0f s "
            "(kafka.session_timeout_ms) unless its partition is revoked meanwhile",
            shard.id,
            shard.epoch,
            "unknown" if current is None else current,
            self._fence_grace_s,
            extra={"fields": {"shard": str(shard.id), "pending_events": shard.pending}},
        )
        self._sync_pause()

    def _reclaim_fenced(self, now: float) -> None:
        """Claim fenced shards again where the group still assigns their partition here
        after `_fence_grace_s`: by Kafka's word nobody else owns it. The partition goes
        through a claim as if newly assigned (paused, claimed, sought, resumed); its other
        shards are saved and kept."""
        for tp, part in list(self._partitions.items()):
            if not part.fenced or now - min(part.fenced.values()) < self._fence_grace_s:
                continue
            log.warning(
                "claiming fenced shards again: the group still assigns their partition to this "
                "worker",
                extra={"fields": {"shards": [str(s) for s in part.fenced]}},
            )
            with self._assigning:
                del self._partitions[tp]
                self._released[tp] = (part, self._assignments)
                self._pending[tp] = now
        self._sync_pause()


def _last_event_ms(part: Partition, shard: Shard) -> int | None:
    """The event time of the last event ``shard`` took since its last checkpoint, as its
    monitor's windows took it (the event's own, else Kafka's); None when it took none.
    Decoded again from its record once per checkpoint, never kept per event."""
    if not shard.since_base:
        return None
    _, value, timestamp, produced = shard.since_base[-1]
    try:
        ts = part.decoder.decode(value, produced).ts_ms
    except InvalidEvent:
        return timestamp
    return ts if ts is not None else timestamp


def _log_commit_failure(offsets: dict[TopicPartition, OffsetAndMetadata], result: object) -> None:
    if isinstance(result, Exception):
        log.warning("offset commit failed: %s", result)
