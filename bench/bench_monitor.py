"""The label-free monitor and the drift count: their cost, and their false alarms.

Three measures:

- ``cost``: the monitor's time per event on Phishing's features (one event's features and
  a prediction, fed to ``Monitor.observe``), against the monitor of a git revision
  (``--baseline``, ``HEAD~`` style; loaded from ``git show`` at run time, nothing vendored)
  in the same run, rounds interleaved; CPU time (a shared machine's other work is not
  counted), less that of the same loop calling a no-op, the least and the median over
  rounds of each;
- ``estimate``: the accuracy estimate's time per event (learners/estimate.py: a
  prediction's confidence into its window, its label into the reliability table, windows
  closing), on a trained model's Phishing probabilities, less the same loop calling a
  no-op; and a delayed-label learner's whole ``predict_pending`` and ``join`` per event
  with the estimate and without it (the learner as before it), rounds interleaved, CPU
  time of this thread;
- ``false-alarms``: stationary streams (Phishing repeated, Agrawal, and a generated stream
  of string categories with numeric features), each learned test-then-train by a linear
  model and a tree with the spec defaults (ADWIN, the monitor): every raw label-free alarm
  and every drift detection, counted per million events, with the detections River's
  two-sided ADWIN gives on the same error stream beside the one-sided count the learner
  keeps. The alert rules fire on any alarm or counted detection (config/alerts.yml), so a
  count above zero is an alert that would reach firing.

``python -m bench monitor [cost|estimate|false-alarms|all] [--events 1000000] [--rounds 5]
[--baseline REV] [--datasets phishing agrawal categories] [--models linear tree]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from river import datasets
from river.datasets import synth

from livelearn.learners import Learner, ModelSpec
from livelearn.learners import monitor as current_monitor
from livelearn.learners.estimate import AccuracyEstimate
from livelearn.learners.learner import _confidence

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("phishing", "agrawal", "categories")
MODELS = ("linear", "tree")
_REGIONS = ("north", "south", "east", "west", "centre")
_DEVICES = ("mobile", "desktop", "tablet")


def _phishing(n: int) -> Iterator[tuple[dict[str, Any], Any]]:
    rows = list(datasets.Phishing())
    return itertools.islice(itertools.cycle(rows), n)


def _agrawal(n: int) -> Iterator[tuple[dict[str, Any], Any]]:
    return itertools.islice(synth.Agrawal(classification_function=0, seed=42), n)


def _categories(n: int) -> Iterator[tuple[dict[str, Any], Any]]:
    """Two string features (skewed shares), two numeric ones; a noisy logistic label."""
    rng = random.Random(7)
    region_weights = (0.4, 0.25, 0.15, 0.12, 0.08)
    device_weights = (0.6, 0.3, 0.1)
    for _ in range(n):
        region = rng.choices(_REGIONS, region_weights)[0]
        device = rng.choices(_DEVICES, device_weights)[0]
        amount = rng.lognormvariate(3, 1)
        age = rng.gauss(40, 12)
        score = (region in ("north", "east")) * 1.2 + (device == "mobile") * 0.8
        score += (amount - 30) / 40 - (age - 40) / 25 + rng.gauss(0, 1)
        yield {"region": region, "device": device, "amount": amount, "age": age}, score > 1


STREAMS = {"phishing": _phishing, "agrawal": _agrawal, "categories": _categories}


def _spec(dataset: str, model: str) -> ModelSpec:
    return ModelSpec.model_validate(spec_body(dataset, model))


def spec_body(dataset: str, model: str, topic: str = "t") -> dict[str, Any]:
    """The spec of ``model`` (linear, tree) for ``dataset``, as a model's configuration."""
    if model == "tree":
        pipeline: list[dict[str, Any]] = [{"class": "tree.HoeffdingTreeClassifier"}]
    elif dataset == "categories":
        pipeline = [
            {"class": "preprocessing.OneHotEncoder"},
            {"class": "linear_model.LogisticRegression"},
        ]
    else:
        pipeline = [
            {"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LogisticRegression"},
        ]
    body: dict[str, Any] = {
        "name": f"{dataset}-{model}",
        "topics": [topic],
        "task": "binary",
        "pipeline": pipeline,
        "metrics": ["Accuracy"],
    }
    if model == "linear" and dataset == "categories":
        body["include"] = ["region", "device"]  # the numeric ones are watched, not learned
    return body


def false_alarms(dataset: str, model: str, events: int) -> dict[str, Any]:
    """One stationary run: raw alarms by signal, and drift detections (one- and two-sided)."""
    learner = Learner(_spec(dataset, model))
    detector = learner._detector
    two_sided = 0
    started = time.perf_counter()
    for offset, (x, y) in enumerate(STREAMS[dataset](events)):
        learner.process(x, y, offset, offset)
        if detector is not None and detector.drift_detected:
            two_sided += 1
    seconds = time.perf_counter() - started
    stats = learner.stats()
    monitor = stats["monitor"]
    per_million = 1e6 / events
    return {
        "dataset": dataset,
        "model": model,
        "events": events,
        "seconds": round(seconds, 1),
        "accuracy": stats["metrics"]["Accuracy"],
        "alarms": monitor["alarms"],
        "alarms_per_million": sum(monitor["alarms"].values()) * per_million,
        "alarm_log": monitor["alarm_log"][:5],
        "drift_two_sided_per_million": two_sided * per_million,
        "drift_counted_per_million": stats["drift_detections"] * per_million,
        "alert_would_fire": bool(sum(monitor["alarms"].values()) or stats["drift_detections"]),
    }


def _baseline_module(revision: str) -> ModuleType:
    """learners/monitor.py as it was at ``revision``, imported from a temporary file."""
    source = subprocess.run(
        ["git", "show", f"{revision}:learners/monitor.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="monitor-baseline-"))
    path = folder / "monitor_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("monitor_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["monitor_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _time_monitor(module: ModuleType, rows: list[dict[str, Any]], preds: list[bool]) -> float:
    """Microseconds an event of ``module``'s Monitor on ``rows`` (default spec)."""
    monitor = module.Monitor(module.MonitorSpec(), classifier=True)
    observe = monitor.observe
    started = time.process_time()
    for offset, (x, y_pred) in enumerate(zip(rows, preds, strict=True)):
        observe(x, y_pred, offset)
    return (time.process_time() - started) / len(rows) * 1e6


def _time_loop(rows: list[dict[str, Any]], preds: list[bool]) -> float:
    """The same loop with a no-op call: what the loop itself costs."""

    def observe(x: Any, y_pred: Any, offset: int) -> None:
        return None

    started = time.process_time()
    for offset, (x, y_pred) in enumerate(zip(rows, preds, strict=True)):
        observe(x, y_pred, offset)
    return (time.process_time() - started) / len(rows) * 1e6


def cost(events: int, rounds: int, baseline: str) -> dict[str, Any]:
    """The monitor's cost per event, this tree against ``baseline``, rounds interleaved."""
    rows = [x for x, _ in _phishing(events)]
    rng = random.Random(3)
    preds = [rng.random() < 0.45 for _ in rows]
    old = _baseline_module(baseline)
    times: dict[str, list[float]] = {"loop": [], "baseline": [], "current": []}
    for _ in range(rounds):
        times["loop"].append(_time_loop(rows, preds))
        times["baseline"].append(_time_monitor(old, rows, preds))
        times["current"].append(_time_monitor(current_monitor, rows, preds))
    loop = min(times["loop"])
    return {
        "events": events,
        "rounds": rounds,
        "baseline_revision": baseline,
        **{
            f"{case}_us_per_event": {
                "min": round(min(ts) - loop, 3),
                "median": round(statistics.median(ts) - loop, 3),
            }
            for case, ts in times.items()
            if case != "loop"
        },
        "loop_us_per_event": round(loop, 3),
    }


def _time_estimate(rows: list[tuple[Any, dict[Any, float], bool]], noop: bool) -> float:
    """Microseconds an event of the estimate's calls (or of no-op calls, ``noop``)."""
    estimate = AccuracyEstimate(window=1000)

    def skip(*args: Any) -> Any:
        return None

    confidence = skip if noop else _confidence
    predicted = skip if noop else estimate.predicted
    labelled = skip if noop else estimate.labelled
    started = time.thread_time()
    for offset, (y_pred, proba, right) in enumerate(rows):
        conf = confidence(y_pred, proba)
        labelled(predicted(conf, offset, offset), conf, right)
    return (time.thread_time() - started) / len(rows) * 1e6


def _time_learner(
    spec: ModelSpec, events: list[tuple[dict[str, Any], Any]], late: int, estimate: bool
) -> float:
    """Microseconds an event of a delayed-label learner predicting each event and joining
    each label ``late`` events later; without ``estimate``, the estimate is taken away
    (the learner as before it)."""
    learner = Learner(spec)
    if not estimate:
        learner._estimate = None
    started = time.thread_time()
    for i, (x, _) in enumerate(events):
        learner.predict_pending(f"e{i}", x, i, i)
        if i >= late:
            learner.join(f"e{i - late}", events[i - late][1], i, i)
    return (time.thread_time() - started) / len(events) * 1e6


def estimate_cost(events: int, rounds: int) -> dict[str, Any]:
    """The estimate's own cost per event, and a delayed-label learner's with and without it."""
    stream = list(_phishing(events))
    plain = _spec("phishing", "linear")
    spec = ModelSpec.model_validate(
        {
            **plain.model_dump(by_alias=True),
            "delayed_labels": {"max_pending": 100_000, "max_age_s": 1e9},
        }
    )
    trained = Learner(plain)
    rows = []
    for i, (x, y) in enumerate(stream):
        proba = trained.predict_proba_one(x)
        y_pred = max(proba, key=proba.__getitem__) if proba else None
        rows.append((y_pred, proba, y_pred == y))
        if i < 2000:
            trained.process(x, y, i)
    times: dict[str, list[float]] = {"noop": [], "estimate": [], "without": [], "with": []}
    learner_events = stream[: max(1, events // 4)]
    for _ in range(rounds):
        times["noop"].append(_time_estimate(rows, noop=True))
        times["estimate"].append(_time_estimate(rows, noop=False))
        times["without"].append(_time_learner(spec, learner_events, 200, estimate=False))
        times["with"].append(_time_learner(spec, learner_events, 200, estimate=True))
    noop = min(times["noop"])
    return {
        "events": events,
        "learner_events": len(learner_events),
        "rounds": rounds,
        "estimate_us_per_event": {
            "min": round(min(times["estimate"]) - noop, 3),
            "median": round(statistics.median(times["estimate"]) - noop, 3),
        },
        **{
            f"learner_{case}_estimate_us_per_event": {
                "min": round(min(times[case]), 3),
                "median": round(statistics.median(times[case]), 3),
            }
            for case in ("without", "with")
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench monitor", description=__doc__)
    parser.add_argument(
        "what", nargs="?", default="all", choices=["cost", "estimate", "false-alarms", "all"]
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--cost-events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--baseline",
        default="5066af0",
        help="the revision whose monitor the cost is compared with (default: the one "
        "before issue 20's signals)",
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    if args.what in ("cost", "all"):
        print(cost(args.cost_events, args.rounds, args.baseline), flush=True)
    if args.what in ("estimate", "all"):
        print(estimate_cost(args.cost_events, args.rounds), flush=True)
    if args.what in ("false-alarms", "all"):
        for dataset in args.datasets:
            for model in args.models:
                print(false_alarms(dataset, model, args.events), flush=True)


if __name__ == "__main__":
    main()
