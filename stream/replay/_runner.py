"""Running a replay: the worker over the replay's adapters, and publishing its result."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from kafka import KafkaConsumer

from learners import ModelSpec, SnapshotCodec, load_learner, spec_changes, spec_fingerprint
from livelearn.errors import ConfigError
from settings import Settings
from store.checkpoints import Checkpoint, RedisCheckpointStore, ShardId
from store.releases import ReleaseStore
from stream.dlq import DeadLetterSink
from stream.metrics import WorkerMetrics
from stream.replay._adapters import InvalidEvents, MemoryStore, ReplaySource
from stream.replay._range import ReplayRange
from stream.replay._recorder import Recorder
from stream.replay._report import COMPARE_SUFFIX, build_report
from stream.replay._start import StartFrom, initial_state
from stream.worker import Worker

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
    """Run the worker over ``span`` and return the report data and the final states."""
    replayed = _never_checkpointed(spec)
    specs = [replayed]
    initial = initial_state(spec, start, span, codec, store, releases)
    learned_with = _learned_with(initial.values(), codec)
    if learned_with is not None and spec_fingerprint(learned_with) != spec_fingerprint(spec):
        raise ConfigError(
            f"--start {start}: the {'live' if start == 'live' else 'release'} shards of "
            f"{spec.name!r} learned with another spec (it changes "
            f"{', '.join(spec_changes(learned_with, spec))}); a changed spec starts fresh "
            f"(--start fresh)"
        )
    if compare_live:
        name = spec.name + COMPARE_SUFFIX
        live_state = initial_state(spec, "live", span, codec, store, releases, name)
        # The live model as it is: with the spec its shards learned with, not --spec's.
        own = _learned_with(live_state.values(), codec) or spec
        specs.append(_never_checkpointed(own).model_copy(update={"name": name}))
        initial.update(live_state)
    run_settings = settings.model_copy(update={"models": specs})
    chunk = max(1, min(span.total // max(points, 1), settings.kafka.max_poll_records))
    source = ReplaySource(consumer, span, chunk)
    memory = MemoryStore(initial)
    invalid = InvalidEvents(forward=dead_letters)
    recorder = Recorder(span.total, spec.metrics[0], progress)
    worker = Worker(
        run_settings,
        source,
        memory,
        invalid,
        codec,
        hash_key,
        WorkerMetrics(),
        on_batch=recorder,
    )
    source.finished = worker.stop
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        worker.stop()

    started = time.monotonic()
    with _signal(signal.SIGINT, on_sigint):
        worker.run()
    recorder.close()
    elapsed = time.monotonic() - started
    final = {s: c for s, c in memory.rows.items() if c.epoch > 0}
    report = build_report(
        spec, span, start, initial, final, recorder, invalid, elapsed, interrupted
    )
    return ReplayResult(report, final, interrupted)


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
    """``spec`` with a cadence that never fires: a replay keeps its state in memory."""
    return spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update=_NEVER)})


def _learned_with(states: Iterable[Checkpoint], codec: SnapshotCodec) -> ModelSpec | None:
    """The spec the first of ``states`` learned with, or None when there is none."""
    for state in states:
        return load_learner(codec, state.blob).spec
    return None
