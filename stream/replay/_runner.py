"""Running a replay: the worker over the replay's adapters, and publishing its result."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from livelearn.errors import ConfigError
from livelearn.learners import (
    ModelSpec,
    SnapshotCodec,
    load_learner,
    spec_changes,
    spec_fingerprint,
)
from livelearn.settings import Settings
from livelearn.store.checkpoints import Checkpoint, RedisCheckpointStore, ShardId
from livelearn.store.releases import ReleaseStore
from livelearn.stream.dlq import DeadLetterSink
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.replay._adapters import InvalidEvents, MemoryStore, ReplaySource
from livelearn.stream.replay._range import ReplayRange
from livelearn.stream.replay._recorder import Recorder
from livelearn.stream.replay._report import COMPARE_SUFFIX, build_report
from livelearn.stream.replay._start import StartFrom, fresh_metrics, initial_state
from livelearn.stream.worker import Worker

# Replays write one checkpoint, at the end: a cadence this long never triggers.
_NEVER = {"every_events": 2**62, "every_seconds": 1e12}


@dataclass
class ReplayResult:
    """What a replay produced: the report data and the final shard checkpoints."""

    report: dict[str, Any]
    final: dict[ShardId, Checkpoint]
    interrupted: bool


def run_replay(
    settings: Settings,
    spec: ModelSpec,
    consumer: KafkaConsumer,
    span: ReplayRange,
    codec: SnapshotCodec,
    hash_key: bytes,
    *,
    start: StartFrom = "fresh",
    compare_live: bool = False,
    store: RedisCheckpointStore | None = None,
    releases: ReleaseStore | None = None,
    dead_letters: DeadLetterSink | None = None,
    points: int = 200,
    progress: bool = True,
) -> ReplayResult:
    """Run the worker over ``span`` and return the report data and the final states.

    A learner started from the live model or a release resumes where that stopped. With
    ``compare_live`` both models are scored only on the events neither had learned: from
    where the later of the two starts, per partition; the replayed model learns the
    events before that point unscored. ``consumer`` is closed at the end.
    """
    replayed = _never_checkpointed(spec)
    own_state = initial_state(spec, start, span, codec, store, releases)
    _check_learned_with(spec, start, own_state.values(), codec)
    starts = _resumes(own_state, span)
    runs = [(span.narrowed(starts), [replayed], own_state)]
    initial = dict(own_state)  # every model's start state, for the report's counts
    window: dict[TopicPartition, tuple[int, int]] | None = None
    if compare_live:
        name = spec.name + COMPARE_SUFFIX
        live_state = initial_state(spec, "live", span, codec, store, releases, name)
        # The live model as it is: with the spec its shards learned with, not --spec's.
        own = _learned_with(live_state.values(), codec) or spec
        live_spec = _never_checkpointed(own).model_copy(update={"name": name})
        live_resumes = _resumes(live_state, span)
        scored_from = {tp: max(offset, live_resumes[tp]) for tp, offset in starts.items()}
        compared = span.narrowed(scored_from)
        if compared.total == 0:
            raise ConfigError(
                f"--compare live: the live model of {spec.name!r} has learned every event of "
                f"the range (it resumes at {_offsets(scored_from)}): choose a range after "
                f"that, or replay without --compare"
            )
        window = compared.offsets
        warm_up = span.narrowed(starts, scored_from)
        initial.update(live_state)
        runs = [(compared, [replayed, live_spec], initial)]
        if warm_up.total:  # learned first, unscored, then scored beside the live model
            runs.insert(0, (warm_up, [replayed], own_state))
    recorder = Recorder(sum(r.total for r, _, _ in runs), spec.metrics[0], progress)
    invalid = InvalidEvents(forward=dead_letters)
    interrupted = False
    started = time.monotonic()
    final: dict[ShardId, Checkpoint] = {}
    scored_since = initial
    try:
        for number, (part_span, specs, states) in enumerate(runs):
            if number:  # after the warm-up: its states, metrics afresh, and the live ones
                states = {**states, **{s: fresh_metrics(codec, c) for s, c in final.items()}}
                scored_since = states
            run_settings = settings.model_copy(update={"models": specs})
            final, stopped = _run_worker(
                run_settings,
                consumer,
                part_span,
                states,
                invalid,
                recorder,
                codec,
                hash_key,
                points,
            )
            if stopped:
                interrupted = True
                break
    finally:
        consumer.close()
    recorder.close()
    elapsed = time.monotonic() - started
    report = build_report(
        spec,
        span,
        start,
        initial,
        final,
        recorder,
        invalid,
        elapsed,
        interrupted,
        scored_since=scored_since,
        window=window,
    )
    return ReplayResult(report, final, interrupted)


def _run_worker(
    settings: Settings,
    consumer: KafkaConsumer,
    span: ReplayRange,
    states: Mapping[ShardId, Checkpoint],
    invalid: InvalidEvents,
    recorder: Recorder,
    codec: SnapshotCodec,
    hash_key: bytes,
    points: int,
) -> tuple[dict[ShardId, Checkpoint], bool]:
    """One worker over ``span`` from ``states``: the final states, and whether Ctrl-C
    stopped it."""
    chunk = max(1, min(span.total // max(points, 1), settings.kafka.max_poll_records))
    source = ReplaySource(consumer, span, chunk)
    memory = MemoryStore(states)
    worker = Worker(
        settings, source, memory, invalid, codec, hash_key, WorkerMetrics(), on_batch=recorder
    )
    source.finished = worker.stop
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        worker.stop()

    with _signal(signal.SIGINT, on_sigint):
        worker.run()
    return {s: c for s, c in memory.rows.items() if c.epoch > 0}, interrupted


def publish(
    releases: ReleaseStore, model: str, final: Mapping[ShardId, Checkpoint], note: str
) -> int:
    """Store the replayed shards as a candidate release (never over the live shards)."""
    mine = {ShardId(model, s.topic, s.partition): c for s, c in final.items() if s.model == model}
    return releases.create(model, shards=mine, source="replay", note=note)


@contextlib.contextmanager
def _signal(signum: int, handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _never_checkpointed(spec: ModelSpec) -> ModelSpec:
    """``spec`` with a cadence that never fires: a replay keeps its state in memory; and a
    new shard starts at the range's start (`ReplaySource`), whatever the spec's ``start``."""
    checkpoint = spec.checkpoint.model_copy(update=_NEVER)
    return spec.model_copy(update={"checkpoint": checkpoint, "start": "earliest"})


def _check_learned_with(
    spec: ModelSpec, start: StartFrom, states: Iterable[Checkpoint], codec: SnapshotCodec
) -> None:
    """Refuse to go on from states learned with another spec than ``spec``."""
    learned_with = _learned_with(states, codec)
    if learned_with is not None and spec_fingerprint(learned_with) != spec_fingerprint(spec):
        raise ConfigError(
            f"--start {start}: the {'live' if start == 'live' else 'release'} shards of "
            f"{spec.name!r} learned with another spec (it changes "
            f"{', '.join(spec_changes(learned_with, spec))}); a changed spec starts fresh "
            f"(--start fresh)"
        )


def _resumes(states: Mapping[ShardId, Checkpoint], span: ReplayRange) -> dict[TopicPartition, int]:
    """Per partition of ``span``, where the learner of ``states`` resumes (else the start)."""
    offsets = {TopicPartition(s.topic, s.partition): c.next_offset for s, c in states.items()}
    return {tp: offsets.get(tp, first) for tp, (first, _) in span.offsets.items()}


def _offsets(offsets: Mapping[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}:{o}" for tp, o in sorted(offsets.items()))


def _learned_with(states: Iterable[Checkpoint], codec: SnapshotCodec) -> ModelSpec | None:
    """The spec the first of ``states`` learned with, or None when there is none."""
    for state in states:
        return load_learner(codec, state.blob, state.binding()).spec
    return None
