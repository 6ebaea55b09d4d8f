"""Replay on a real Kafka broker and a real Redis server (issue: the replay tool)."""

from __future__ import annotations

import itertools
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from livelearn.learners import SnapshotCodec, load_learner
from livelearn.settings import load_settings
from livelearn.stream.replay import parse_offsets, resolve_range, run_replay
from tests.integration.conftest import (
    HASH_KEY,
    SNAPSHOT_KEY,
    Deployment,
    encode,
    phishing_events,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

PROBE = [e["features"] for e in phishing_events(n=50, start=1100)]


def _replay(dep: Deployment, **kwargs: Any) -> Any:
    """Run a replay in-process over the deployment's topic (no group, no commits)."""
    settings = load_settings(dep.config_path)
    spec = settings.model(dep.model)
    consumer = KafkaConsumer(bootstrap_servers=dep.bootstrap, enable_auto_commit=False)
    span_args = {k: kwargs.pop(k) for k in ("from_ms", "to_ms", "offsets") if k in kwargs}
    span = resolve_range(consumer, spec.topics, **span_args)
    return run_replay(
        settings,
        spec,
        consumer,
        span,
        SnapshotCodec(SNAPSHOT_KEY.encode()),
        HASH_KEY.encode(),
        store=dep.store,
        progress=False,
        **kwargs,
    )


def _replay_argv(dep: Deployment, *args: str) -> list[str]:
    """``livelearn replay`` of the deployment's model, with ``args``."""
    cli = [sys.executable, "-m", "livelearn.cli.main", "--config", str(dep.config_path)]
    return [*cli, "replay", dep.model, *args]


def _cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _replay_argv(dep, *args),
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _learn_live(dep: Deployment, n: int) -> None:
    produce(dep.bootstrap, dep.topic, encode(phishing_events(n=n)))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == n, 60, f"{n} events learned live", context=worker.tail)
    assert worker.terminate() == 0


def test_replaying_a_whole_topic_from_fresh_gives_the_live_model(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    _learn_live(dep, 600)
    result = _replay(dep)
    (checkpoint,) = result.final.values()
    replayed, live = load_learner(dep.codec, checkpoint.blob), dep.learner()
    assert replayed.stats()["events_learned"] == live.stats()["events_learned"] == 600
    for x in PROBE:
        assert replayed.predict_proba_one(x) == live.predict_proba_one(x)
    assert result.report["replayed"]["metrics"] == live.stats()["metrics"]


def test_a_time_range_selects_exactly_the_events_inside_it(make_topic, deploy) -> None:
    partitions = 3
    dep = deploy(make_topic(partitions=partitions))
    events = phishing_events(n=300)
    t0 = int(time.time() * 1000) - 86_400_000  # brokers refuse timestamps from the future
    producer = KafkaProducer(bootstrap_servers=dep.bootstrap, acks="all")
    for i, e in enumerate(events):
        producer.send(dep.topic, orjson.dumps(e), partition=i % partitions, timestamp_ms=t0 + i)
    producer.flush()
    producer.close()
    lo, hi = t0 + 61, t0 + 217  # [lo, hi)
    inside = [i for i in range(len(events)) if lo <= t0 + i < hi]
    result = _replay(dep, from_ms=lo, to_ms=hi)
    assert result.report["counts"]["scored"] == len(inside)
    for p in range(partitions):
        mine = [i for i in inside if i % partitions == p]
        shard = result.report["replayed"]["shards"][f"{dep.topic}/{p}"]
        assert shard["events_learned"] == len(mine)
        assert shard["next_offset"] == mine[-1] // partitions + 1
    assert result.report["range"]["partitions"][f"{dep.topic}/0"] == [
        inside[0] // partitions + (inside[0] % partitions > 0),
        (hi - t0 + partitions - 1) // partitions,
    ]


def test_offsets_select_a_range_per_partition(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=2))
    produce(dep.bootstrap, dep.topic, encode(phishing_events(n=200)), partitions=2)
    result = _replay(dep, offsets=parse_offsets("0:10-60,1:0-5"))
    shards = result.report["replayed"]["shards"]
    assert shards[f"{dep.topic}/0"]["events_learned"] == 50
    assert shards[f"{dep.topic}/1"]["events_learned"] == 5


def test_a_replay_leaves_the_live_groups_offsets_alone(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=2))
    produce(dep.bootstrap, dep.topic, encode(phishing_events(n=200)), partitions=2)
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset(0) == 100 and dep.next_offset(1) == 100, 60, "learned")
    assert worker.terminate() == 0
    group = f"g-{dep.model}"

    def committed() -> dict[int, int | None]:
        consumer = KafkaConsumer(
            bootstrap_servers=dep.bootstrap, group_id=group, enable_auto_commit=False
        )
        try:
            return {p: consumer.committed(TopicPartition(dep.topic, p)) for p in (0, 1)}
        finally:
            consumer.close()

    before = committed()
    assert before == {0: 100, 1: 100}
    result = _cli(dep, "--report", str(dep.tmp_path / "r"), "--start", "live")
    assert result.returncode == 0, result.stderr
    assert committed() == before
    checkpoints = {p: dep.store.describe(dep.shard(p)) for p in (0, 1)}
    assert all(c is not None and c["next_offset"] == 100 for c in checkpoints.values())


def test_the_report_json_and_png_match_the_replayed_model(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    values = encode(phishing_events(n=400))
    values.insert(100, b"{not json")
    produce(dep.bootstrap, dep.topic, values)
    folder = dep.tmp_path / "report"
    result = _cli(dep, "--report", str(folder), "--publish")
    assert result.returncode == 0, result.stderr
    report = json.loads((folder / "report.json").read_text())
    png = (folder / "metrics.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    with Image.open(folder / "metrics.png") as image:
        image.verify()
        assert image.size[0] >= 600
    assert report["counts"] == {"learned": 400, "scored": 400, "invalid": 1}
    assert report["invalid"][0]["offset"] == 100 and report["invalid"][0]["reason"] == "not_json"
    assert len(report["replayed"]["series"]) >= 50
    # The published candidate release holds the replayed model; live shards are untouched.
    number = report["published_release"]
    from livelearn.store.releases import ReleaseStore

    releases = ReleaseStore(dep.store._r, dep.store, SNAPSHOT_KEY.encode(), f"ll-{dep.model}")
    release = releases.get(dep.model, number)
    assert release.source == "replay" and releases.pinned(dep.model) is None
    (shard,) = release.shards.values()
    learner = dep.codec.decode(shard.blob)
    final = learner.stats()["metrics"]
    for name, value in report["replayed"]["metrics"].items():
        assert math.isclose(value, final[name], rel_tol=0, abs_tol=1e-12)
    assert dep.store.describe(dep.shard()) is None  # nothing written over live state


def _tree_spec(dep: Any) -> Path:
    """A spec file for the deployment's topic with another pipeline (a Hoeffding tree)."""
    spec_path = dep.tmp_path / "spec.yaml"
    spec_path.write_text(
        "topics: [" + dep.topic + "]\ntask: binary\n"
        "pipeline:\n  - class: tree.HoeffdingTreeClassifier\nmetrics: [Accuracy, LogLoss]\n"
    )
    return spec_path


def test_start_live_with_a_changed_spec_is_refused_naming_what_changed(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    _learn_live(dep, 100)
    spec_path = _tree_spec(dep)
    result = _cli(dep, "--start", "live", "--spec", str(spec_path))
    assert result.returncode == 2, result.stderr
    assert "learned with another spec" in result.stderr and "pipeline" in result.stderr


def _scored_from(model: Any, events: list[dict[str, Any]], first_scored: int) -> dict[str, float]:
    """River's own loop over ``events``: learns them all, scores those from ``first_scored``."""
    from river import metrics

    accuracy, logloss = metrics.Accuracy(), metrics.LogLoss()
    for i, e in enumerate(events):
        if i >= first_scored:
            proba = model.predict_proba_one(e["features"])
            accuracy.update(e["label"], max(proba, key=proba.get) if proba else None)
            logloss.update(e["label"], proba)
        model.learn_one(e["features"], e["label"])
    return {"Accuracy": accuracy.get(), "LogLoss": logloss.get()}


def test_compare_live_scores_both_models_only_on_events_neither_learned(make_topic, deploy) -> None:
    from river import tree

    dep = deploy(make_topic(partitions=1))
    _learn_live(dep, 300)
    live_before = dep.learner().model.clone(include_attributes=True)
    events = phishing_events(n=500)
    produce(dep.bootstrap, dep.topic, encode(events[300:]))
    spec_path = _tree_spec(dep)
    folder = dep.tmp_path / "cmp"
    result = _cli(dep, "--report", str(folder), "--spec", str(spec_path), "--compare", "live")
    assert result.returncode == 0, result.stderr
    report = json.loads((folder / "report.json").read_text())
    live, replayed = report["compare"]["live"], report["replayed"]
    assert report["compare"]["scored_on"] == {f"{dep.topic}/0": [300, 500]}
    # The replayed tree learns all 500, but it and the live model are scored on the 200
    # events the live model had not learned.
    assert replayed["events_learned"] == 500 and replayed["events_scored"] == 200
    assert live["events_learned"] == live["events_scored"] == 200
    want_replayed = _scored_from(tree.HoeffdingTreeClassifier(), events, 300)
    want_live = _scored_from(live_before, events[300:], 0)
    for got, want in ((replayed["metrics"], want_replayed), (live["metrics"], want_live)):
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert math.isclose(got[name], value, rel_tol=0, abs_tol=1e-12), name
    assert live["series"] and replayed["series"]


def test_compare_live_refuses_a_range_the_live_model_has_learned(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    _learn_live(dep, 100)
    result = _cli(dep, "--compare", "live")
    assert result.returncode == 2, result.stderr
    assert "has learned every event of the range" in result.stderr


def test_start_live_resumes_where_the_live_model_stopped(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    _learn_live(dep, 300)
    produce(dep.bootstrap, dep.topic, encode(phishing_events(n=500)[300:]))
    result = _replay(dep, start="live")
    assert result.report["started_at"] == {f"{dep.topic}/0": 300}
    assert result.report["counts"]["learned"] == 200
    # Live model + 200 more = the same as one replay over all 500 events, from fresh.
    (resumed,) = result.final.values()
    whole = _replay(dep)
    (fresh,) = whole.final.values()
    a, b = load_learner(dep.codec, resumed.blob), load_learner(dep.codec, fresh.blob)
    assert a.stats()["events_learned"] == b.stats()["events_learned"] == 500
    for x in PROBE:
        assert a.predict_proba_one(x) == b.predict_proba_one(x)


def test_start_from_a_release_and_send_invalid_events_to_the_dlq(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    values = encode(phishing_events(n=300))
    values.insert(250, b'{"id": "x", "features": [1]}')
    produce(dep.bootstrap, dep.topic, values)
    first = _cli(dep, "--report", str(dep.tmp_path / "a"), "--offsets", "0:0-200", "--publish")
    assert first.returncode == 0, first.stderr
    number = json.loads((dep.tmp_path / "a" / "report.json").read_text())["published_release"]
    second = _cli(
        dep,
        "--report",
        str(dep.tmp_path / "b"),
        "--offsets",
        "0:200-301",
        "--start",
        f"release:{number}",
        "--dlq",
    )
    assert second.returncode == 0, second.stderr
    report = json.loads((dep.tmp_path / "b" / "report.json").read_text())
    assert report["start"] == f"release:{number}"
    assert report["counts"] == {"learned": 100, "scored": 100, "invalid": 1}
    # The same model as one replay over everything: the release carried the first 200.
    whole = _replay(dep)
    (final,) = whole.final.values()
    assert load_learner(dep.codec, final.blob).stats()["events_learned"] == 300
    from livelearn.stream.dlq import read_headers
    from tests.integration.conftest import read_all

    (dead,) = read_all(dep.bootstrap, f"{dep.topic}.dlq")
    assert read_headers(dead.headers)["source.offset"] == "250"


def test_ctrl_c_stops_cleanly_and_writes_a_partial_report(make_topic, deploy) -> None:
    dep = deploy(
        make_topic(partitions=1),
        pipeline=[{"class": "tree.HoeffdingTreeClassifier"}],
        metrics=["Accuracy"],
    )
    events = phishing_events()
    produce(dep.bootstrap, dep.topic, encode(events * 16))
    folder = dep.tmp_path / "partial"
    log = dep.tmp_path / "replay.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            _replay_argv(dep, "--report", str(folder)),
            env=dep.env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    # The first progress line comes with the first events replayed.
    wait_for(
        lambda: "replay progress" in log.read_text() or proc.poll() is not None,
        30,
        "the replay to start",
    )
    proc.send_signal(signal.SIGINT)  # as Ctrl-C does
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, log.read_text()[-2000:]
    report = json.loads((folder / "report.json").read_text())
    assert report["interrupted"] is True
    assert 0 < report["counts"]["scored"] < len(events) * 16
    assert (folder / "metrics.png").stat().st_size > 0
    assert "partial" in out


def test_a_range_ending_in_a_transaction_marker_finishes(make_topic, deploy) -> None:
    dep = deploy(make_topic(partitions=1))
    producer = KafkaProducer(bootstrap_servers=dep.bootstrap, transactional_id=f"tx-{dep.model}")
    producer.init_transactions()
    producer.begin_transaction()
    for value in encode(phishing_events(n=50)):
        producer.send(dep.topic, value)
    producer.commit_transaction()  # the commit marker takes the last offset: 50 records, end 51
    producer.close()
    result = _replay(dep)
    assert result.report["range"]["partitions"][f"{dep.topic}/0"] == [0, 51]
    assert result.report["counts"] == {"learned": 50, "scored": 50, "invalid": 0}


def test_a_topic_whose_event_times_go_back_is_plotted_run_by_run(make_topic, deploy) -> None:
    """The same events produced twice (`make run` twice): the report's series goes back in
    event time, and the plot draws each run as a line of its own."""
    from livelearn.stream.replay._plot import runs

    dep = deploy(make_topic(partitions=1))
    values = encode(phishing_events(n=600))
    produce(dep.bootstrap, dep.topic, values + values)
    folder = dep.tmp_path / "report"
    result = _cli(dep, "--report", str(folder))
    assert result.returncode == 0, result.stderr
    series = json.loads((folder / "report.json").read_text())["replayed"]["series"]
    times = [p["event_time_ms"] for p in series]
    assert any(later < earlier for earlier, later in itertools.pairwise(times))
    parts = runs(series)
    assert len(parts) == 2
    assert parts[0][-1]["offset"] < 600 <= parts[1][0]["offset"]
    for part in parts:
        assert [p["event_time_ms"] for p in part] == sorted(p["event_time_ms"] for p in part)
    from PIL import Image

    with Image.open(folder / "metrics.png") as image:
        image.verify()
        assert image.format == "PNG"
