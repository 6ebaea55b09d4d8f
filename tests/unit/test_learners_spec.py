from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from river import compose, drift, forest, linear_model, metrics, optim, preprocessing, tree

from livelearn import LivelearnError as LearnersError
from livelearn import SpecError
from livelearn.learners import (
    CheckpointPolicy,
    ModelSpec,
    RiverRef,
)

SpecData = Callable[..., dict[str, Any]]

LOGREG = [
    {"class": "preprocessing.StandardScaler"},
    {
        "class": "linear_model.LogisticRegression",
        "params": {"optimizer": {"class": "optim.SGD", "params": {"lr": 0.05}}},
    },
]


@pytest.fixture
def spec_data() -> SpecData:
    """Factory: a valid binary spec as config data, with keys overridden."""

    def make(**overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": "fraud",
            "topics": ["payments"],
            "task": "binary",
            "pipeline": LOGREG,
        }
        data.update(overrides)
        return data

    return make


# --- valid specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "final_type"),
    [
        ({}, linear_model.LogisticRegression),
        (
            {"pipeline": [{"class": "river.tree.HoeffdingTreeClassifier"}]},
            tree.HoeffdingTreeClassifier,
        ),
        (
            {
                "task": "multiclass",
                "pipeline": [
                    {"class": "forest.ARFClassifier", "params": {"n_models": 2, "seed": 1}}
                ],
                "metrics": ["Accuracy", "MacroF1", "CrossEntropy"],
            },
            forest.ARFClassifier,
        ),
        (
            {
                "task": "regression",
                "pipeline": [
                    {"class": "preprocessing.StandardScaler"},
                    {"class": "linear_model.LinearRegression"},
                ],
                "metrics": ["MAE", "RMSE", "R2"],
                "drift": {"class": "drift.PageHinkley", "params": {"threshold": 30}},
            },
            linear_model.LinearRegression,
        ),
        (
            {
                "task": "multiclass",
                "pipeline": [
                    {"class": "preprocessing.StandardScaler"},
                    {
                        "class": "multiclass.OneVsRestClassifier",
                        "params": {"classifier": {"class": "linear_model.LogisticRegression"}},
                    },
                ],
                "drift": None,
            },
            None,
        ),
    ],
    ids=["logreg", "hoeffding-river-prefix", "arf-multiclass", "linear-regression", "ovr-nested"],
)
def test_valid_spec_builds(spec_data: SpecData, overrides: dict[str, Any], final_type: Any) -> None:
    spec = ModelSpec.from_config(spec_data(**overrides), loc="models[0]")
    model = spec.build_pipeline()
    final = list(model.steps.values())[-1] if isinstance(model, compose.Pipeline) else model
    if final_type is not None:
        assert isinstance(final, final_type)
    assert [type(m).__name__ for m in spec.build_metrics()] == spec.metrics
    assert (spec.build_drift() is None) == (spec.drift is None)


def test_nested_params_are_built_recursively(spec_data: SpecData) -> None:
    model = ModelSpec.from_config(spec_data()).build_pipeline()
    assert isinstance(model["StandardScaler"], preprocessing.StandardScaler)
    optimizer = model["LogisticRegression"].optimizer
    assert isinstance(optimizer, optim.SGD)
    assert optimizer.learning_rate == 0.05
    assert isinstance(ModelSpec.from_config(spec_data()).pipeline[1].params["optimizer"], RiverRef)


def test_build_pipeline_returns_fresh_models(spec_data: SpecData) -> None:
    spec = ModelSpec.from_config(spec_data())
    first, second = spec.build_pipeline(), spec.build_pipeline()
    assert first is not second
    assert first["LogisticRegression"].optimizer is not second["LogisticRegression"].optimizer
    first.learn_one({"a": 1.0}, True)
    assert second.predict_proba_one({"a": 1.0}) == {False: 0.5, True: 0.5}


def test_class_names_are_stored_relative_to_river(spec_data: SpecData) -> None:
    spec = ModelSpec.from_config(
        spec_data(pipeline=[{"class": "river.linear_model.LogisticRegression"}])
    )
    assert spec.pipeline[0].class_ == "linear_model.LogisticRegression"


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("binary", ["Accuracy", "LogLoss"]),
        ("multiclass", ["Accuracy"]),
        ("regression", ["MAE", "RMSE"]),
    ],
    ids=["binary", "multiclass", "regression"],
)
def test_default_metrics_fit_the_task(spec_data: SpecData, task: str, expected: list[str]) -> None:
    pipeline = {
        "binary": LOGREG,
        "multiclass": [{"class": "tree.HoeffdingTreeClassifier"}],
        "regression": [{"class": "linear_model.LinearRegression"}],
    }[task]
    spec = ModelSpec.from_config(spec_data(task=task, pipeline=pipeline))
    assert spec.metrics == expected


def test_defaults(spec_data: SpecData) -> None:
    spec = ModelSpec.from_config(spec_data())
    assert spec.label == "label"
    assert spec.include is None
    assert spec.exclude == []
    assert spec.rolling_window == 1000
    assert spec.checkpoint == CheckpointPolicy(every_events=10_000, every_seconds=1.0)
    assert isinstance(spec.build_drift(), drift.ADWIN)
    assert spec.sanitize == []


def test_dump_round_trips(spec_data: SpecData) -> None:
    spec = ModelSpec.from_config(spec_data(sanitize=[{"field": "email", "action": "hash"}]))
    dumped = spec.model_dump(mode="json")
    assert dumped["pipeline"][1]["params"]["optimizer"] == {
        "class": "optim.SGD",
        "params": {"lr": 0.05},
    }
    assert ModelSpec.from_config(dumped) == spec


def test_spec_is_frozen_and_picklable(spec_data: SpecData) -> None:
    spec = ModelSpec.from_config(spec_data(exclude=["b"]))
    with pytest.raises(pydantic.ValidationError):
        spec.name = "other"  # type: ignore[misc]
    restored = pickle.loads(pickle.dumps(spec))
    assert restored == spec
    assert restored.select_features({"a": 1, "b": 2}) == {"a": 1}


# --- invalid specs ----------------------------------------------------------------------------


def _steps(*names: str) -> list[dict[str, Any]]:
    return [{"class": name} for name in names]


INVALID = [
    ("unknown-class", {"pipeline": _steps("preprocessing.StandardScaler", "linear_model.Nope")},
     "models[0].pipeline[1].class", "'linear_model.Nope'"),
    ("os-system", {"pipeline": _steps("preprocessing.StandardScaler", "os.system")},
     "models[0].pipeline[1].class", "only classes of the river package"),
    ("builtins-eval", {"pipeline": _steps("builtins.eval")},
     "models[0].pipeline[0].class", "'builtins.eval'"),
    ("river-private", {"pipeline": _steps("river._private")},
     "models[0].pipeline[0].class", "starting with '_'"),
    ("private-module", {"pipeline": _steps("linear_model._base.GLM")},
     "models[0].pipeline[0].class", "starting with '_'"),
    ("dunder", {"pipeline": _steps("linear_model.LogisticRegression.__class__")},
     "models[0].pipeline[0].class", "starting with '_'"),
    ("dots", {"pipeline": _steps("..")}, "models[0].pipeline[0].class", "is not allowed"),
    ("river-dot-dot", {"pipeline": _steps("river..os")},
     "models[0].pipeline[0].class", "is not allowed"),
    ("bare-module", {"pipeline": _steps("linear_model")},
     "models[0].pipeline[0].class", "'module.Name'"),
    ("not-a-string", {"pipeline": [{"class": 42}]}, "models[0].pipeline[0].class", "42"),
    ("function", {"pipeline": _steps("stream.iter_csv")},
     "models[0].pipeline[0].class", "not a class"),
    ("module-attribute", {"pipeline": _steps("compose.pipeline.collections")},
     "models[0].pipeline[0].class", "not a class"),
    ("class-from-outside-river", {"pipeline": _steps("utils.rolling.Generic")},
     "models[0].pipeline[0].class", "outside the river package"),
    ("nested-unknown", {"pipeline": [{"class": "linear_model.LogisticRegression",
                                      "params": {"optimizer": {"class": "optim.Nope"}}}]},
     "models[0].pipeline[0].params.optimizer.class", "'optim.Nope'"),
    ("nested-outside", {"pipeline": [{"class": "linear_model.LogisticRegression",
                                      "params": {"optimizer": {"class": "os.system"}}}]},
     "models[0].pipeline[0].params.optimizer.class", "river package"),
    ("bad-param", {"pipeline": [{"class": "linear_model.LogisticRegression",
                                 "params": {"lr": 0.1}}]},
     "models[0].pipeline[0].params", "unexpected keyword argument 'lr'"),
    ("empty-pipeline", {"pipeline": []}, "models[0].pipeline", "empty"),
    ("model-not-last", {"pipeline": _steps("linear_model.LogisticRegression",
                                           "preprocessing.StandardScaler")},
     "models[0].pipeline[0].class", "not a transformer"),
    ("regressor-for-binary", {"pipeline": _steps("linear_model.LinearRegression")},
     "models[0].pipeline[0].class", "not a classifier"),
    ("classifier-for-regression", {"task": "regression"},
     "models[0].pipeline[1].class", "not a regressor"),
    ("binary-model-for-multiclass", {"task": "multiclass", "metrics": ["Accuracy"]},
     "models[0].pipeline[1].class", "OneVsRestClassifier"),
    ("unknown-metric", {"metrics": ["Accuracy", "Nope"]}, "models[0].metrics[1]", "LogLoss"),
    ("regression-metric-for-binary", {"metrics": ["MAE"]}, "models[0].metrics[0]",
     "does not fit a binary task"),
    ("binary-metric-for-multiclass",
     {"task": "multiclass", "pipeline": _steps("tree.HoeffdingTreeClassifier"),
      "metrics": ["Accuracy", "LogLoss"]},
     "models[0].metrics[1]", "CrossEntropy"),
    ("classification-metric-for-regression",
     {"task": "regression", "pipeline": _steps("linear_model.LinearRegression"),
      "metrics": ["Accuracy"]},
     "models[0].metrics[0]", "MAE"),
    ("not-a-number-metric", {"metrics": ["ConfusionMatrix"]}, "models[0].metrics[0]",
     "does not fit"),
    ("dotted-metric", {"metrics": ["os.system"]}, "models[0].metrics[0]", "not a metric"),
    ("duplicate-metric", {"metrics": ["Accuracy", "Accuracy"]}, "models[0].metrics[1]", "twice"),
    ("no-metrics", {"metrics": []}, "models[0].metrics", "at least one metric"),
    ("no-topics", {"topics": []}, "models[0].topics", "model 'fraud' has no topic"),
    ("missing-topics", {"topics": None}, "models[0].topics", "list"),
    ("bad-topic", {"topics": ["a b"]}, "models[0].topics[0]", "'a b'"),
    ("bad-name", {"name": "Fraud Model"}, "models[0].name", "'Fraud Model'"),
    ("bad-task", {"task": "ranking"}, "models[0].task", "'ranking'"),
    ("drift-not-detector", {"drift": {"class": "preprocessing.StandardScaler"}},
     "models[0].drift.class", "not a drift detector"),
    ("binary-drift-for-regression",
     {"task": "regression", "pipeline": _steps("linear_model.LinearRegression"),
      "drift": {"class": "drift.binary.DDM"}},
     "models[0].drift.class", "booleans"),
    ("rolling-window-zero", {"rolling_window": 0}, "models[0].rolling_window", "greater than 0"),
    ("checkpoint-negative", {"checkpoint": {"every_seconds": -1}},
     "models[0].checkpoint.every_seconds", "greater than 0"),
    ("sanitize-action", {"sanitize": [{"field": "email", "action": "encrypt"}]},
     "models[0].sanitize[0].action", "'drop' or 'hash'"),
    ("sanitize-duplicate", {"sanitize": [{"field": "e", "action": "hash"},
                                         {"field": "e", "action": "drop"}]},
     "models[0].sanitize[1].field", "more than one"),
    ("unknown-setting", {"topic": ["payments"]}, "models[0].topic", "not a known setting"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "loc", "text"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_spec_raises_spec_error_naming_the_setting(
    spec_data: SpecData,
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, Any],
    loc: str,
    text: str,
) -> None:
    imported: list[str] = []
    real_import = importlib.import_module

    def recording_import(name: str, package: str | None = None) -> Any:
        imported.append(name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", recording_import)
    with pytest.raises(SpecError) as info:
        ModelSpec.from_config(spec_data(**overrides), loc="models[0]")
    error = info.value
    assert error.loc == loc
    assert str(error).startswith(f"{loc}: ")
    assert text in str(error)
    assert all(name.startswith("river.") for name in imported), imported


def test_spec_error_is_a_value_error_and_a_learners_error() -> None:
    assert issubclass(SpecError, ValueError)
    assert issubclass(SpecError, LearnersError)
    error = pickle.loads(pickle.dumps(SpecError("models[0].task", "bad", ("x", "y"))))
    assert (error.loc, error.problem, error.more) == ("models[0].task", "bad", (("x", "y"),))
    assert str(error) == "models[0].task: bad\nx: y"


def test_every_problem_is_reported(spec_data: SpecData) -> None:
    data = spec_data(name="Bad Name", task="ranking", topics=[])
    del data["pipeline"]
    with pytest.raises(SpecError) as info:
        ModelSpec.from_config(data, loc="config/models/fraud.yaml")
    text = str(info.value)
    for loc in ("name", "topics", "task", "pipeline"):
        assert f"config/models/fraud.yaml.{loc}: " in text


def test_from_config_refuses_a_non_mapping() -> None:
    with pytest.raises(SpecError, match=r"^models\[2\]: a model spec is a mapping"):
        ModelSpec.from_config(["not", "a", "mapping"], loc="models[2]")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "loc", "text"),
    [
        ({"pipeline": _steps("os.system")}, ("pipeline", 0, "class"), "river package"),
        (
            {"pipeline": [{"class": "linear_model.LogisticRegression",
                           "params": {"optimizer": {"class": "optim.Nope"}}}]},
            ("pipeline", 0, "params", "optimizer", "class"),
            "'optim.Nope'",
        ),
        ({"metrics": ["Accuracy", "MAE"]}, ("metrics", 1), "does not fit"),
        ({"topics": []}, ("topics",), "has no topic"),
    ],
    ids=["class", "nested-class", "metric", "topics"],
)  # fmt: skip
def test_nested_in_settings_problems_keep_their_paths(
    spec_data: SpecData, overrides: dict[str, Any], loc: tuple[Any, ...], text: str
) -> None:
    class Settings(pydantic.BaseModel):
        models: list[ModelSpec]

    with pytest.raises(pydantic.ValidationError) as info:
        Settings.model_validate({"models": [spec_data(), spec_data(**overrides)]})
    (error,) = info.value.errors()
    assert error["loc"] == ("models", 1, *loc)
    assert error["type"] == "spec"
    assert text in error["msg"]


def test_direct_construction_raises_a_validation_error(spec_data: SpecData) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        ModelSpec(**spec_data(pipeline=_steps("os.system")))
    assert isinstance(info.value, ValueError)
    assert info.value.errors()[0]["loc"] == ("pipeline", 0, "class")


def test_metric_classes_come_from_river_metrics(spec_data: SpecData) -> None:
    spec = ModelSpec.from_config(spec_data(metrics=["ROCAUC", "Accuracy"]))
    built = spec.build_metrics()
    assert isinstance(built[0], metrics.ROCAUC)
    assert isinstance(built[1], metrics.Accuracy)
    assert built[0] is not spec.build_metrics()[0]


# --- feature selection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (None, [], {"c": 3, "b": 2, "a": 1}),
        (None, ["b"], {"c": 3, "a": 1}),
        (["a", "c", "missing"], [], {"c": 3, "a": 1}),
        (["a", "b"], ["b"], {"a": 1}),
        ([], [], {}),
    ],
    ids=["all", "exclude", "include-keeps-input-order", "exclude-wins", "include-nothing"],
)
def test_select_features(
    spec_data: SpecData, include: list[str] | None, exclude: list[str], expected: dict[str, int]
) -> None:
    spec = ModelSpec.from_config(spec_data(include=include, exclude=exclude))
    features = {"c": 3, "b": 2, "a": 1}
    selected = spec.select_features(features)
    assert selected == expected
    assert list(selected) == list(expected)
    assert selected is not features
    assert features == {"c": 3, "b": 2, "a": 1}
