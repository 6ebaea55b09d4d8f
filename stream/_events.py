"""The per-event path: decode each record once, then, for every shard of its partition,
test-then-train the learner (score the event, then learn from it), and checkpoint when
enough events are pending.

A record no model can read, or an event one model refuses, goes to the dead-letter topic
with its reason; an event that makes a learner raise rolls that learner back to just
before it (`EventPath._roll_back`), so a half-done update leaves no trace.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from livelearn.errors import InvalidEvent
from livelearn.learners import Learner, check_label, in_holdout, load_learner
from livelearn.stream._checkpointing import Checkpointing
from livelearn.stream._shard import Partition, Shard
from livelearn.stream.decode import Event
from livelearn.stream.dlq import as_invalid, dead_letter_record
from livelearn.stream.fetcher import KafkaRecord

log = logging.getLogger("livelearn.worker")


class EventPath(Checkpointing):
    """Each polled batch through every shard of its partition."""

    def _handle(self, part: Partition, records: list[KafkaRecord]) -> None:
        decode = part.decoder.decode
        shards = part.shards
        timed = False  # the first learn of each batch is timed for the latency histogram
        for rec in records:
            offset = rec.offset
            timestamp = rec.timestamp
            # The time the event's own is judged against (`EventDecoder.decode`): Kafka's,
            # or the clock's once, so that a rollback decodes the record to the same event.
            produced = timestamp if timestamp >= 0 else int(time.time() * 1000)
            try:
                event = decode(rec.value, produced)
            except Exception as exc:  # one policy for every failure: the dead-letter topic
                self._dead_letter(part, rec, as_invalid(exc, "decode_error"))
                for shard in shards:
                    if shard.next_offset <= offset:
                        shard.next_offset = offset + 1
                        shard.pending += 1  # the skip itself must reach a checkpoint
                continue
            for shard in shards:
                if offset < shard.next_offset:
                    continue  # already in this shard's restored checkpoint
                try:
                    if timed:
                        learned = learn_event(shard, shard.learner, event, offset, timestamp)
                    else:
                        started = time.perf_counter()
                        learned = learn_event(shard, shard.learner, event, offset, timestamp)
                        if learned is not False:
                            timed = True
                            self._metrics.learn_seconds.labels(shard.id.model).observe(
                                time.perf_counter() - started
                            )
                except Exception as exc:
                    self._processing_error(part, shard, rec, exc)
                    continue
                if learned is not False:
                    # What a rollback replays (`_roll_back`): the record, not the event
                    # decoded from it, which would keep every event's objects alive (and
                    # scanned by the garbage collector) until the next checkpoint.
                    shard.since_base.append((offset, rec.value, timestamp, produced))
                    if learned is not True:
                        self._metrics.label_delay.labels(shard.id.model).observe(learned)
                shard.next_offset = offset + 1
                shard.pending += 1
                if (
                    shard.pending >= shard.every_events
                    and self._may_checkpoint()
                    and self._checkpoint(part, shard, "events")
                ):
                    self._commit([part])
            if shards is not part.shards:  # a shard was dropped mid-batch
                shards = part.shards
        self._report_counts(part)

    def _processing_error(
        self, part: Partition, shard: Shard, rec: KafkaRecord, exc: Exception
    ) -> None:
        """One event made ``shard`` raise: roll the learner back to just before it, then
        dead-letter the event and go on, or hold the shard there (events.on_processing_error)."""
        offset = rec.offset
        model = shard.id.model
        if isinstance(exc, InvalidEvent):  # bad data for this model (a label of the wrong
            # type), found before the learner was touched: always a dead letter
            self._dead_letter(
                part, rec, InvalidEvent(exc.reason, f"model {model}: {exc.detail}"), model
            )
            shard.next_offset = offset + 1
            shard.pending += 1
            return
        if not self._roll_back(part, shard):
            return
        if self._settings.events.on_processing_error == "stop_shard":
            self._metrics.processing_errors.labels(model, "shard_stopped").inc()
            log.error(
                "shard stopped at an event it cannot process (events.on_processing_error: "
                "stop_shard): %s: %s",
                type(exc).__name__,
                exc,
                extra={"fields": {"shard": str(shard.id), "offset": offset}},
            )
            if shard.pending:
                self._checkpoint(part, shard, "error")  # what it learned before that event
            if any(s is shard for s in part.shards):  # not held already (a refused save)
                self._hold(part, shard, offset)
            return
        self._metrics.processing_errors.labels(model, "dead_lettered").inc()
        invalid = as_invalid(exc, "model_error")
        detail = f"model {model}: {invalid.detail}"
        self._dead_letter(part, rec, InvalidEvent(invalid.reason, detail), model)
        shard.next_offset = offset + 1
        shard.pending += 1  # the skip itself must reach a checkpoint
        # The rebuilt learner becomes the base (in memory only), so that a run of bad
        # events costs one rebuild each, not a replay of everything since the checkpoint.
        shard.base_blob = self._codec.encode(shard.learner)
        shard.since_base.clear()

    def _roll_back(self, part: Partition, shard: Shard) -> bool:
        """Rebuild ``shard``'s learner from its last checkpoint and the records learned since,
        so that a half-done update leaves no trace; False (shard held) if that fails."""
        decode = part.decoder.decode
        try:
            learner = load_learner(self._codec, shard.base_blob)
            for offset, value, timestamp, produced in shard.since_base:
                learn_event(shard, learner, decode(value, produced), offset, timestamp)
        except Exception:
            log.exception(
                "shard cannot be rebuilt after an error; holding it at its checkpoint",
                extra={"fields": {"shard": str(shard.id)}},
            )
            self._metrics.processing_errors.labels(shard.id.model, "shard_stopped").inc()
            self._hold(part, shard, shard.checkpointed_offset)
            return False
        shard.use(learner)
        return True

    def _dead_letter(
        self, part: Partition, rec: KafkaRecord, exc: InvalidEvent, model: str | None = None
    ) -> None:
        """Send ``rec`` to the dead-letter topic; ``model`` is the model that refused it
        (None: no model could read it), part of the dedup key."""
        dead_letter_record(self._dlq, rec, exc, model)
        self._undelivered.add(part.tp)
        self._metrics.dead_letters.labels(rec.topic, exc.reason).inc()


def learn_event(shard: Shard, learner: Learner, event: Event, offset: int, timestamp: int) -> Any:
    """Make ``learner`` (``shard``'s, or one being rebuilt) take ``event``, at ``offset``:
    test-then-train it, keep its prediction until its label comes, join a label to its
    prediction, or score it into the holdout.

    Returns
    -------
    Any
        False when the event is nothing to this shard (a label for another model of the
        topic), the label's delay in seconds for a joined label (0.0 included: test with
        ``is not False``), True otherwise.

    Raises
    ------
    InvalidEvent
        The event's label is not one the shard's task can learn, or a delayed label does
        not match a prediction; the learner is untouched.
    """
    features = event.features
    label = event.fields.get(shard.label_field)
    if label is not None:
        check_label(shard.task, label)
    if features is None or (label is None and shard.delayed):
        if not shard.delayed:
            return False  # this model takes its labels with the features
        ts = event.ts_ms if event.ts_ms is not None else timestamp
        if features is None:
            if label is None:
                return False  # a label for another model of the topic
            return learner.join(event.id, label, offset, ts)
        if shard.sanitize is not None:
            features = shard.sanitize(features)
        learner.predict_pending(event.id, features, offset, ts)
        return True
    if shard.sanitize is not None:
        features = shard.sanitize(features)
    ts = event.ts_ms if event.ts_ms is not None else timestamp  # for the monitor's windows
    if shard.holdout and label is not None and in_holdout(event.id, shard.holdout):
        learner.score_holdout(features, label, offset, ts)  # scored, never learned
    else:
        learner.process(features, label, offset, ts)
    return True
