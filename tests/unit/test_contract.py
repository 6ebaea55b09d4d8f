"""Every model spec shipped in config/models/ goes through the same checks."""

from __future__ import annotations

import copy
import itertools
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from river import datasets

from livelearn.learners import Learner, ModelSpec, Sanitizer, SnapshotCodec

SPEC_DIR = Path(__file__).resolve().parents[2] / "config" / "models"
SPEC_FILES = sorted(SPEC_DIR.glob("*.yaml"))
TRAIN = 300
PROBE = 30

Event = tuple[dict[str, Any], Any]
MakeLearner = Callable[[], Learner]

_DATASETS: dict[str, Callable[[], Any]] = {
    "binary": datasets.Phishing,
    "multiclass": datasets.ImageSegments,
    "regression": datasets.TrumpApproval,
}


def _load(path: Path) -> ModelSpec:
    with path.open() as f:
        return ModelSpec.from_config(yaml.safe_load(f), loc=str(path.relative_to(SPEC_DIR.parent)))


@pytest.fixture(params=SPEC_FILES, ids=[path.stem for path in SPEC_FILES])
def spec(request: pytest.FixtureRequest) -> ModelSpec:
    path: Path = request.param
    return _load(path)


@pytest.fixture
def events(spec: ModelSpec) -> list[Event]:
    return list(itertools.islice(_DATASETS[spec.task](), TRAIN + PROBE))


@pytest.fixture
def make_trained(spec: ModelSpec, events: list[Event]) -> MakeLearner:
    """Factory: a fresh learner trained on the first TRAIN events, from scratch each call."""

    def make() -> Learner:
        learner = Learner(spec)
        for offset, (x, y) in enumerate(events[:TRAIN]):
            learner.process(x, y, offset)
        return learner

    return make


def _predictions(learner: Learner, probe: list[Event]) -> list[Any]:
    out: list[Any] = [learner.predict_one(x) for x, _ in probe]
    if learner.spec.task != "regression":
        out += [learner.predict_proba_one(x) for x, _ in probe]
    return out


def test_spec_directory_is_not_empty() -> None:
    assert {path.name for path in SPEC_FILES} >= {
        "phishing-logreg.yaml",
        "phishing-hoeffding.yaml",
        "regression-linear.yaml",
        "multiclass-forest.yaml",
    }


def test_spec_name_matches_its_file(spec: ModelSpec) -> None:
    assert any(path.stem == spec.name for path in SPEC_FILES)


def test_learns_and_reports(make_trained: MakeLearner) -> None:
    learner = make_trained()
    stats = learner.stats()
    assert stats["events_learned"] == stats["events_scored"] == TRAIN
    primary = learner.spec.metrics[0]
    assert stats["metrics"][primary] is not None


def test_pickle_round_trip(make_trained: MakeLearner, events: list[Event]) -> None:
    learner = make_trained()
    restored = pickle.loads(pickle.dumps(learner, protocol=5))
    probe = events[TRAIN:]
    assert _predictions(restored, probe) == _predictions(learner, probe)
    assert restored.stats() == learner.stats()
    more = [(x, y, TRAIN + i) for i, (x, y) in enumerate(probe)]
    assert [restored.process(*e) for e in more] == [learner.process(*e) for e in more]
    assert restored.stats() == learner.stats()


def test_snapshot_round_trip(make_trained: MakeLearner, events: list[Event]) -> None:
    learner = make_trained()
    codec = SnapshotCodec(b"contract-key")
    restored = codec.decode(codec.encode(learner))
    assert isinstance(restored, Learner)
    assert _predictions(restored, events[TRAIN:]) == _predictions(learner, events[TRAIN:])
    assert restored.stats() == learner.stats()


def test_process_leaves_its_input_unchanged(spec: ModelSpec, events: list[Event]) -> None:
    learner = Learner(spec)
    for offset, (x, y) in enumerate(events[:100]):
        before = copy.deepcopy((x, y))
        learner.process(x, y, offset)
        learner.process(x, None, offset)
        assert (x, y) == before


def test_new_feature_can_appear_mid_stream(spec: ModelSpec, events: list[Event]) -> None:
    learner = Learner(spec)
    for offset, (x, y) in enumerate(events[:TRAIN]):
        if offset >= TRAIN // 2:
            x = {**x, "brand_new_feature": float(offset % 7)}
        learner.process(x, y, offset)
    x, _ = events[TRAIN]
    learner.predict_one({**x, "brand_new_feature": 1.0})
    learner.predict_one({**x, "another_new_feature": 2.0})
    assert learner.stats()["events_learned"] == TRAIN


def test_seeded_runs_repeat_exactly(spec: ModelSpec, events: list[Event]) -> None:
    first, second = Learner(spec), Learner(spec)
    returned_first = [first.process(x, y, i) for i, (x, y) in enumerate(events[:TRAIN])]
    returned_second = [second.process(x, y, i) for i, (x, y) in enumerate(events[:TRAIN])]
    assert returned_first == returned_second
    assert _predictions(first, events[TRAIN:]) == _predictions(second, events[TRAIN:])
    assert first.stats() == second.stats()


SANITIZING = [path for path in SPEC_FILES if _load(path).sanitize]


@pytest.mark.parametrize("path", SANITIZING, ids=[path.stem for path in SANITIZING])
def test_sanitized_events_are_learned(path: Path) -> None:
    spec = _load(path)
    events = list(itertools.islice(_DATASETS[spec.task](), 100))
    sanitizer = Sanitizer(spec.sanitize, key=b"contract-key")
    learner = Learner(spec)
    for offset, (x, y) in enumerate(events):
        raw = {**x, **{rule.field: f"secret-{offset % 5}" for rule in spec.sanitize}}
        clean = sanitizer.apply(raw)
        for rule in spec.sanitize:
            if rule.action == "drop":
                assert rule.field not in clean
            else:
                assert clean[rule.field].startswith("h:")
        learner.process(clean, y, offset)
    assert learner.stats()["events_learned"] == 100
