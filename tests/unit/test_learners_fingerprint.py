"""The spec fingerprint: every learning field changes it, cadence and routing do not."""

from __future__ import annotations

from typing import Any

import pytest

from livelearn.learners import LEARNING_FIELDS, ModelSpec, spec_changes, spec_fingerprint

BASE: dict[str, Any] = {
    "name": "m",
    "topics": ["t"],
    "task": "binary",
    "pipeline": [
        {"class": "preprocessing.StandardScaler"},
        {"class": "linear_model.LogisticRegression"},
    ],
    "include": ["a", "b"],
    "exclude": ["c"],
    "sanitize": [{"field": "ip", "action": "drop"}, {"field": "user", "action": "hash"}],
}


def _spec(**changes: Any) -> ModelSpec:
    return ModelSpec.model_validate({**BASE, **changes})


LEARNING = [
    (
        "task",
        {
            "task": "multiclass",
            "pipeline": [{"class": "tree.HoeffdingTreeClassifier"}],
            "metrics": ["Accuracy"],
        },
    ),
    (
        "pipeline",
        {"pipeline": [{"class": "linear_model.LogisticRegression", "params": {"l2": 0.1}}]},
    ),
    ("include", {"include": ["a"]}),
    ("include", {"include": None}),
    ("exclude", {"exclude": []}),
    ("label", {"label": "y"}),
    ("metrics", {"metrics": ["Accuracy"]}),
    ("metrics", {"metrics": ["LogLoss", "Accuracy"]}),
    ("rolling_window", {"rolling_window": 10}),
    ("drift", {"drift": {"class": "drift.PageHinkley"}}),
    ("drift", {"drift": None}),
    ("sanitize", {"sanitize": [{"field": "ip", "action": "hash"}]}),
]


@pytest.mark.parametrize(
    ("field", "changes"), LEARNING, ids=[f"{f}-{i}" for i, (f, _) in enumerate(LEARNING)]
)
def test_a_learning_field_changes_the_fingerprint(field: str, changes: dict[str, Any]) -> None:
    before, after = _spec(), _spec(**changes)
    assert spec_fingerprint(before) != spec_fingerprint(after)
    changed = spec_changes(before, after)
    assert field in changed and set(changed) <= set(LEARNING_FIELDS)


SAME = [
    ("checkpoint", {"checkpoint": {"every_events": 5, "every_seconds": 60}}),
    ("topics", {"topics": ["u", "v"]}),
    ("route_by_key", {"route_by_key": True}),
    ("name", {"name": "other"}),
    ("include-order", {"include": ["b", "a"]}),
    ("sanitize-order", {"sanitize": list(reversed(BASE["sanitize"]))}),
    ("default-spelled-out", {"label": "label", "rolling_window": 1000}),
    ("river-prefix", {"pipeline": [{"class": "river." + s["class"]} for s in BASE["pipeline"]]}),
]


@pytest.mark.parametrize("changes", [c for _, c in SAME], ids=[i for i, _ in SAME])
def test_cadence_topics_and_routing_leave_it_alone(changes: dict[str, Any]) -> None:
    before, after = _spec(), _spec(**changes)
    assert spec_fingerprint(before) == spec_fingerprint(after)
    assert spec_changes(before, after) == []


def test_the_fingerprint_is_a_stable_sha256_hex() -> None:
    fingerprint = spec_fingerprint(_spec())
    assert fingerprint == spec_fingerprint(_spec())
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0


def test_a_pickled_spec_keeps_its_fingerprint() -> None:
    import pickle

    spec = _spec()
    assert spec_fingerprint(pickle.loads(pickle.dumps(spec))) == spec_fingerprint(spec)
