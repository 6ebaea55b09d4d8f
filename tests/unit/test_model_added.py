"""Adding a model to a topic never moves another model's position (issue 9, item 7)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from livelearn.learners import SnapshotCodec, load_learner
from livelearn.settings import Settings
from livelearn.store.checkpoints import ShardId
from livelearn.stream.metrics import WorkerMetrics
from livelearn.stream.worker import Worker
from tests.unit.test_worker_loop import TP, FakeConsumer, FakeDlq, FakeStore, Record
from tests.unit.test_worker_loop import _run as run_batches

KEY = b"unit-test-snapshot-key-000000000"


def _model(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "topics": ["t"],
        "task": "binary",
        "pipeline": [{"class": "linear_model.LogisticRegression"}],
        "checkpoint": {"every_events": 1000, "every_seconds": 3600},
    }


def _run(store: FakeStore, reset: str, names: list[str], first: int, last: int) -> FakeConsumer:
    settings = Settings(kafka={"auto_offset_reset": reset}, models=[_model(n) for n in names])
    ref: list[Worker] = []
    consumer = FakeConsumer(ref)
    worker = Worker(
        settings, consumer, store, FakeDlq(), SnapshotCodec(KEY), b"h" * 32, WorkerMetrics()
    )
    ref.append(worker)
    records = [
        Record(
            "t",
            0,
            i,
            None,
            orjson.dumps({"id": str(i), "features": {"x": i % 5}, "label": i % 2 == 0}),
        )
        for i in range(first, last)
    ]
    poll = consumer.poll

    def poll_from_the_seek(timeout_ms: int = 0, max_records: int | None = None) -> Any:
        """As a broker does: records from the position the worker sought."""
        batch = poll(timeout_ms, max_records)
        return {tp: [r for r in rs if r.offset >= consumer.seeks[tp]] for tp, rs in batch.items()}

    consumer.poll = poll_from_the_seek  # type: ignore[method-assign]
    run_batches(worker, consumer, [records])
    return consumer


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_a_new_model_does_not_move_the_existing_ones(reset: str) -> None:
    """The new model starts where its start (here kafka.auto_offset_reset) says: the
    partition's beginning, or its end when it is assigned; the old one goes on from its
    checkpoint either way."""
    store = FakeStore()
    _run(store, "earliest", ["a"], 0, 30)  # model a learns offsets 0-29 and checkpoints
    # Model b is added to the topic.
    consumer = _run(store, reset, ["a", "b"], 0, 60)
    a, b = ShardId("a", "t", 0), ShardId("b", "t", 0)
    assert consumer.seeks[TP] == (0 if reset == "earliest" else 30)
    codec = SnapshotCodec(KEY)
    assert load_learner(codec, store.rows[a].blob).stats()["events_learned"] == 60
    assert store.rows[a].next_offset == store.rows[b].next_offset == 60
    learned_b = load_learner(codec, store.rows[b].blob).stats()["events_learned"]
    assert learned_b == (60 if reset == "earliest" else 0)
