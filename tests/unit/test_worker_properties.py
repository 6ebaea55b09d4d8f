"""Property-based: bad data never stops learning (issue). Whatever a hostile producer mixes
into a stream (tests/hostile.py), the worker loop never raises, passes every record once
for every model (learned, or dead-lettered with a documented reason that fits it), and ends
with the model and metrics of River's own loop over exactly the events valid for the model;
killed at any point and restarted, it ends with the same checkpoints.

The expectations come from the README, not from the worker: the decoder's reasons from each
kind of spoiling, a label's fit from the event contract, and ``model_error`` from River's own
loop raising on the event.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from livelearn.learners import ModelSpec, SnapshotCodec, load_learner
from livelearn.settings import Settings
from livelearn.store.checkpoints import ShardId
from livelearn.stream.decode import EventDecoder
from livelearn.stream.dlq import dedup_key
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.hostile import DOCUMENTED_REASONS, Kind, hostile_kinds, render_valid
from tests.reference import (
    Expected,
    assert_learned_as_river,
    assert_same_predictions,
    rivers_loop,
)
from tests.unit.test_worker_loop import KEY, TP, FakeConsumer, FakeDlq, FakeStore, Record

SCALER = {"class": "preprocessing.StandardScaler"}
PIPELINES: dict[str, dict[str, Any]] = {
    "binary": {
        "pipeline": [SCALER, {"class": "linear_model.LogisticRegression"}],
        "metrics": ["Accuracy", "LogLoss"],
    },
    "multiclass": {
        "pipeline": [SCALER, {"class": "linear_model.SoftmaxRegression"}],
        "metrics": ["Accuracy", "CrossEntropy"],
    },
    "regression": {
        "pipeline": [SCALER, {"class": "linear_model.LinearRegression"}],
        "metrics": ["MAE", "RMSE"],
    },
}
TASKS = sorted(PIPELINES)
KINDS = {task: hostile_kinds(task) for task in TASKS}
# Every kind of every task: a bad label for one task is a good one for another.
ALL_KINDS = list(
    {kind.name + repr(sorted(kind.reasons)): kind for t in TASKS for kind in KINDS[t]}.values()
)
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No explain phase: on streams this long it takes minutes and adds little.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)

# Valid feature names and values, awkward ones included: a comma or a quote in a name
# (the decoder's fast path counts commas), non-ASCII, the empty name, a NUL, names of
# top-level fields; integers at the 64-bit bounds and floats at the double's ends.
NAMES = ["x", "y", "a,b", 'q"', "\u00e9t\u00e9", "\U0001f40d", "", "\x00", "label", "id"]
# Dropped by every model's sanitize rule, whatever its type.
SECRET = "secret"
DROPPED = frozenset([SECRET])
feature_values = (
    st.floats(-1e3, 1e3)
    | st.integers(-1000, 1000)
    | st.booleans()
    | st.sampled_from([2**63 - 1, -(2**63), 1e308, -1e308, 5e-324, -0.0])
)
secret_values = (
    st.none()
    | st.booleans()
    | st.text(max_size=5)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(0, 1)
)
LABELS: dict[str, st.SearchStrategy[Any]] = {
    "binary": st.booleans() | st.sampled_from([0, 1]),
    "multiclass": st.sampled_from(["cat", "dog", "\u00e9", "", 3, -1, True]),
    "regression": st.floats(-100, 100) | st.integers(-100, 100) | st.sampled_from([1e300, 2**62]),
}
PROBES = [
    {},
    {"x": 1.0, "y": -2.0},
    {"x": -50.0, "a,b": 3, "\u00e9t\u00e9": True},
    {name: float(i) - 4 for i, name in enumerate(NAMES)},
]


def _spec(task: str, name: str = "m") -> dict[str, Any]:
    return {
        "name": name,
        "topics": [TP.topic],
        "task": task,
        **PIPELINES[task],
        "rolling_window": 7,
        "sanitize": [{"field": SECRET, "action": "drop"}],
    }


ONE_MODEL = {task: [_spec(task)] for task in TASKS}
# Three models on one topic, reading the same label field.
THREE_MODELS = [_spec(task, f"m-{task}") for task in TASKS]


@dataclass(frozen=True)
class Item:
    """One produced record: its value; the event it holds when the decoder accepts it
    (a model learns it, or refuses its label, or River raises on it); otherwise the kind
    of spoiling and the reasons its dead letter may give."""

    kind: str
    value: bytes | None
    event: dict[str, Any] | None = None
    reasons: frozenset[str] = frozenset()


def _hostile(kind: Kind, event: dict[str, Any], rng: random.Random) -> Item:
    value = kind.make(rng, event)
    held = json.loads(value) if kind.decodes and value is not None else None
    return Item(kind.name, value, held, kind.reasons)


def events(labels: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    features = st.dictionaries(st.sampled_from(NAMES), feature_values, max_size=5)
    secret = st.dictionaries(st.just(SECRET), secret_values, max_size=1)
    return st.fixed_dictionaries(
        {
            "id": st.text(max_size=6) | st.integers(),
            "features": st.builds(lambda f, s: {**f, **s}, features, secret),
            "label": st.none() | labels | labels | labels,
        }
    )


def streams(tasks: Sequence[str], kinds: list[Kind]) -> st.SearchStrategy[list[Item]]:
    labels = st.one_of(*(LABELS[t] for t in tasks))
    valid = st.builds(
        lambda event, rng: Item("valid", render_valid(rng, event), event=event),
        events(labels),
        st.randoms(use_true_random=False),
    )
    hostile = st.builds(
        _hostile, st.sampled_from(kinds), events(labels), st.randoms(use_true_random=False)
    )
    return st.lists(st.one_of(valid, valid, hostile), min_size=1, max_size=50)


# -- the worker, against the fakes of test_worker_loop ---------------------------------


class Killed(BaseException):
    """The process is gone (SIGKILL): nothing after it runs, nothing it meant to write is."""


class KillableStore(FakeStore):
    """A FakeStore whose writes stop at a kill; ``kill_at_save`` (nth save, written first)
    lands the kill at a save, before or after the write reaches Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.dead = False
        self.kill_at_save: tuple[int, bool] | None = None

    def save(self, *args, **kwargs) -> int:
        if self.dead:
            raise Killed
        if self.kill_at_save is not None and len(self.saves) == self.kill_at_save[0]:
            self.dead = True
            if self.kill_at_save[1]:
                super().save(*args, **kwargs)
            raise Killed
        return super().save(*args, **kwargs)


class KillableDlq(FakeDlq):
    """A FakeDlq that keeps each dead letter's detail, and can die while sending its
    ``kill_at``-th one."""

    def __init__(self, store: KillableStore, kill_at: int | None) -> None:
        super().__init__()
        self._store, self._kill_at = store, kill_at

    def send(self, topic, value, key, *, reason, detail, source, model=None) -> None:
        if self._kill_at is not None and len(self.sent) == self._kill_at:
            self._store.dead = True
            raise Killed
        self.sent.append({"topic": topic, "reason": reason, "source": source, "detail": detail})


class StreamConsumer(FakeConsumer):
    """Serves one partition's records from where the worker seeks, in batches of the given
    sizes, none while it is paused; ``rewind`` re-delivers that many records before the
    seek, as a broker may. The worker is stopped at the end of the records, or when the
    partition stays paused."""

    def __init__(
        self,
        worker_ref: list[Worker],
        records: list[Record],
        sizes: Sequence[int],
        store: KillableStore,
        *,
        rewind: int = 0,
        kill_at_poll: int | None = None,
    ) -> None:
        super().__init__(worker_ref)
        self._records, self._sizes, self._rewind = records, sizes, rewind
        self._store, self._kill_at_poll = store, kill_at_poll
        self.position = 0
        self.polls = 0
        self.idle = 0

    def subscribe(self, topics, listener) -> None:
        super().subscribe(topics, listener)
        listener.on_partitions_assigned([TP])

    def seek(self, tp, offset) -> None:
        super().seek(tp, offset)
        self.position = max(0, offset - self._rewind)

    def seek_to_beginning(self, *tps) -> None:
        super().seek_to_beginning(*tps)
        self.position = 0

    def resume(self, *tps) -> None:
        self.paused.difference_update(tps)

    def beginning_offsets(self, tps) -> dict:
        return dict.fromkeys(tps, 0)

    def end_offsets(self, tps) -> dict:
        return dict.fromkeys(tps, len(self._records))

    def poll(self, timeout_ms: int = 0, max_records: int | None = None):
        if self.polls == self._kill_at_poll:
            self._store.dead = True
            raise Killed
        self.polls += 1
        if TP in self.paused:
            self.idle += 1
            if self.idle > 5:
                self._worker[0].stop()
            return {}
        if self.position >= len(self._records):
            self._worker[0].stop()
            return {}
        size = self._sizes[self.polls % len(self._sizes)]
        batch = self._records[self.position : self.position + size]
        self.position += len(batch)
        return {TP: batch}


@dataclass
class Run:
    worker: Worker
    consumer: StreamConsumer
    dlq: KillableDlq
    killed: bool


def _run(
    models: list[dict[str, Any]],
    stream: list[Item],
    every_events: int,
    sizes: Sequence[int],
    store: KillableStore,
    *,
    rewind: int = 0,
    kill: tuple[str, int, bool] | None = None,
) -> Run:
    """Run one worker over ``stream`` from the store's checkpoints to the end, or until the
    kill (where, nth since this start, written first) lands, as SIGKILL would."""
    settings = Settings(
        models=[
            {**spec, "checkpoint": {"every_events": every_events, "every_seconds": 3600}}
            for spec in models
        ],
        # Each checkpoint when due: with the time budget, a loaded machine would move them,
        # and an example would not replay the same (hypothesis calls that flaky).
        checkpoint={"max_share": 1},
    )
    where, nth, written = kill if kill is not None else ("", -1, False)
    store.dead = False
    store.kill_at_save = (len(store.saves) + nth, written) if where == "save" else None
    # Produced "now": each record's time is judged against its Kafka timestamp.
    records = [
        Record(TP.topic, TP.partition, i, None, it.value, PRODUCED_MS)
        for i, it in enumerate(stream)
    ]
    ref: list[Worker] = []
    consumer = StreamConsumer(
        ref,
        records,
        sizes,
        store,
        rewind=rewind,
        kill_at_poll=nth if where == "poll" else None,
    )
    dlq = KillableDlq(store, nth if where == "dead_letter" else None)
    codec = SnapshotCodec(KEY)
    worker = Worker(settings, consumer, store, dlq, codec, b"h" * 32, WorkerMetrics())
    ref.append(worker)
    try:
        worker.run()
    except Killed:
        assert kill is not None
        if hypothesis.currently_in_test_context():
            hypothesis.event(f"killed at a {where}")
        return Run(worker, consumer, dlq, True)
    return Run(worker, consumer, dlq, False)


# -- checks against River's own loop (tests/reference.py) --------------------------------


def _expected(spec: ModelSpec, stream: list[Item]) -> Expected:
    return rivers_loop(spec, ((i, item.event) for i, item in enumerate(stream)), DROPPED)


def _assert_learned_as_river(store: KillableStore, spec: ModelSpec, want: Expected) -> None:
    row = store.rows[ShardId(spec.name, TP.topic, TP.partition)]
    learner = load_learner(SnapshotCodec(KEY), row.blob)
    stats = learner.stats()
    assert row.stats == stats
    assert_learned_as_river(stats, learner.model, want, spec.task, PROBES)


def _assert_dead_letters(
    stream: list[Item], sent: list[dict[str, Any]], expected: dict[str, Expected]
) -> None:
    """A record the decoder refuses is dead-lettered once, with a reason that fits its kind;
    one a model cannot learn, once for that model (``bad_label``, ``model_error``); no
    other record is dead-lettered."""
    want: dict[tuple[int, str | None], set[str]] = {}
    for offset, item in enumerate(stream):
        if item.event is None:
            want[offset, None] = set(item.reasons)
    for name, model in expected.items():
        want.update({(offset, name): {"bad_label"} for offset in model.bad_label})
        want.update({(offset, name): {"model_error"} for offset in model.raised})
    got: dict[tuple[int, str | None], str] = {}
    for letter in sent:
        assert letter["topic"] == TP.topic
        assert letter["source"][:2] == (TP.topic, TP.partition)
        assert letter["reason"] in DOCUMENTED_REASONS, letter
        offset = letter["source"][2]
        model = next((m for m in expected if letter["detail"].startswith(f"model {m}:")), None)
        assert (offset, model) not in got, f"dead-lettered twice: {letter}"
        got[offset, model] = letter["reason"]
    assert got.keys() == want.keys(), [
        (key, stream[key[0]].kind, stream[key[0]].value) for key in got.keys() ^ want.keys()
    ]
    for key, reason in got.items():
        assert reason in want[key], (key, stream[key[0]].kind, reason, stream[key[0]].value)


def _check_stream(
    models: list[dict[str, Any]], stream: list[Item], every_events: int, sizes: list[int]
) -> None:
    store = KillableStore()
    run = _run(models, stream, every_events, sizes, store)  # never raises
    assert TP not in run.consumer.paused, "a shard was held"
    specs = run.worker._settings.models
    for spec in specs:
        stopped = run.worker._metrics.processing_errors.labels(spec.name, "shard_stopped")
        assert stopped._value.get() == 0
        assert store.rows[ShardId(spec.name, TP.topic, TP.partition)].next_offset == len(stream)
    expected = {spec.name: _expected(spec, stream) for spec in specs}
    for spec in specs:
        _assert_learned_as_river(store, spec, expected[spec.name])
    _assert_dead_letters(stream, run.dlq.sent, expected)


@pytest.mark.parametrize("task", TASKS)
@PROPERTY
@given(
    data=st.data(),
    every_events=st.integers(1, 40),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
)
def test_a_hostile_stream_is_learned_as_rivers_loop_learns_its_valid_events(
    task: str, data: st.DataObject, every_events: int, sizes: list[int]
) -> None:
    stream = data.draw(streams([task], KINDS[task]), label="stream")
    _check_stream(ONE_MODEL[task], stream, every_events, sizes)


@PROPERTY
@given(
    data=st.data(),
    every_events=st.integers(1, 40),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
)
def test_three_models_on_one_topic_each_learn_the_events_valid_for_them(
    data: st.DataObject, every_events: int, sizes: list[int]
) -> None:
    """A label one task refuses is another's: each model learns or dead-letters each
    record once, independently of the others."""
    stream = data.draw(streams(TASKS, ALL_KINDS), label="stream")
    _check_stream(THREE_MODELS, stream, every_events, sizes)


kills = st.tuples(
    st.sampled_from(["poll", "save", "dead_letter"]), st.integers(0, 8), st.booleans()
)


@PROPERTY
@given(
    data=st.data(),
    every_events=st.integers(1, 25),
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    plan=st.lists(st.tuples(kills, st.integers(0, 6)), min_size=1, max_size=3),
)
def test_killed_and_restarted_it_ends_with_the_uninterrupted_checkpoints(
    data: st.DataObject,
    every_events: int,
    sizes: list[int],
    plan: list[tuple[tuple[str, int, bool], int]],
) -> None:
    """Kills between polls, at a checkpoint (before or after its write) and while sending a
    dead letter; each restart may be handed records its checkpoint covers again."""
    stream = data.draw(streams(TASKS, ALL_KINDS), label="stream")
    whole = KillableStore()
    whole_sent = _run(THREE_MODELS, stream, every_events, sizes, whole).dlq.sent

    store = KillableStore()
    sent: list[dict[str, Any]] = []
    rewind = 0
    for kill, next_rewind in plan:
        run = _run(THREE_MODELS, stream, every_events, sizes, store, rewind=rewind, kill=kill)
        sent += run.dlq.sent
        rewind = next_rewind
    sent += _run(THREE_MODELS, stream, every_events, sizes, store, rewind=rewind).dlq.sent

    codec = SnapshotCodec(KEY)
    for spec in THREE_MODELS:
        shard = ShardId(spec["name"], TP.topic, TP.partition)
        want, got = whole.rows[shard], store.rows[shard]
        assert got.next_offset == want.next_offset == len(stream)
        assert got.stats == want.stats
        got_model, want_model = (load_learner(codec, row.blob).model for row in (got, want))
        assert_same_predictions(spec["task"], got_model, want_model, PROBES)
    # A dead letter may be sent again after a kill or a re-delivery, always with the same
    # dedup key; none is missing.
    assert _letters(sent) == _letters(whole_sent)


def _letters(sent: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    """Each dead letter's dedup key, and the model it names (None: refused by the decoder)."""
    models = [spec["name"] for spec in THREE_MODELS]
    return {
        (
            dedup_key(d["source"], d["reason"]),
            next((m for m in models if d["detail"].startswith(f"model {m}:")), None),
        )
        for d in sent
    }


NOW_S = 1_795_687_200.0
PRODUCED_MS = int(NOW_S * 1000)


def test_a_record_dead_lettered_for_its_time_is_not_learned_after_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [NOW_S]
    decoder = functools.partial(EventDecoder, clock=lambda: clock[0])
    monkeypatch.setattr("livelearn.stream.worker.EventDecoder", decoder)
    ahead_ms = int(NOW_S * 1000) + 86_400_000 + 5_000  # 5 s past events.ts_max_future_s
    events = [
        {"id": "a", "features": {"x": 1.0}, "label": True},
        {"id": "b", "ts": ahead_ms, "features": {"x": 2.0}, "label": False},
        {"id": "c", "features": {"x": 3.0}, "label": True},
    ]
    records = [Item("valid", json.dumps(e).encode(), e) for e in events]
    store = KillableStore()
    # Killed after its first batch, before any checkpoint: the dead letter was sent.
    sent = _run(ONE_MODEL["binary"], records, 1000, [3], store, kill=("poll", 1, False)).dlq.sent
    assert [(d["source"][2], d["reason"]) for d in sent] == [(1, "bad_timestamp")]
    clock[0] += 10  # the restarted worker's clock: record b is no longer ahead
    sent += _run(ONE_MODEL["binary"], records, 1000, [3], store).dlq.sent

    learned = store.rows[ShardId("m", TP.topic, TP.partition)].stats["events_learned"]
    dead_lettered = {d["source"] for d in sent}
    assert learned + len(dead_lettered) == len(records), (learned, dead_lettered)
