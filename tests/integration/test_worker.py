"""The worker on a real Kafka broker and a real Redis server (issue: the learning worker)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from river import evaluate, metrics

from livelearn import SnapshotRefused
from livelearn.learners import ModelSpec, Sanitizer, SanitizeRule
from livelearn.stream.dlq import read_headers
from tests.integration.conftest import (
    LOGREG_PIPELINE,
    WorkerHandle,
    each_consumer,
    encode,
    phishing_events,
    produce,
    read_all,
    runs_a_fetch_process,
    wait_for,
)

pytestmark = pytest.mark.integration


def _probe() -> list[dict[str, Any]]:
    return [e["features"] for e in phishing_events(n=100, start=1000)]


def _river_reference(events: list[dict[str, Any]]) -> tuple[Any, dict[str, float]]:
    """River's own test-then-train loop over the decoded events."""
    spec = ModelSpec.model_validate(
        {"name": "ref", "topics": ["x"], "task": "binary", "pipeline": LOGREG_PIPELINE}
    )
    model = spec.build_pipeline()
    acc, logloss = metrics.Accuracy(), metrics.LogLoss()
    data = [(e["features"], e["label"]) for e in (orjson.loads(v) for v in encode(events))]
    evaluate.progressive_val_score(data, model, acc)
    model2 = spec.build_pipeline()
    evaluate.progressive_val_score(data, model2, logloss)
    return model, {"Accuracy": acc.get(), "LogLoss": logloss.get()}


def _assert_same_predictions(model_a: Any, model_b: Any) -> None:
    for x in _probe():
        pa, pb = model_a.predict_proba_one(x), model_b.predict_proba_one(x)
        assert pa.keys() == pb.keys()
        for k in pa:
            assert math.isclose(pa[k], pb[k], rel_tol=0, abs_tol=1e-12), (x, pa, pb)


def assert_learned_as_rivers_loop(learner: Any, events: list[dict[str, Any]]) -> None:
    """``learner`` learned each of ``events`` once, exactly as River's own loop: the same
    count, the same metrics and the same predictions, to 1e-12."""
    reference, ref_metrics = _river_reference(events)
    stats = learner.stats()
    assert stats["events_learned"] == len(events)
    for name, value in ref_metrics.items():
        assert math.isclose(stats["metrics"][name], value, rel_tol=0, abs_tol=1e-12), name
    _assert_same_predictions(learner.model, reference)


@each_consumer
def test_one_partition_equals_rivers_own_loop(make_topic, deploy, consumer) -> None:
    topic = make_topic(partitions=1)
    dep = deploy(topic, settings={"kafka": consumer})
    events = phishing_events(n=1000)
    produce(dep.bootstrap, topic, encode(events))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 1000, 60, "1000 events learned", context=worker.tail)
    assert worker.terminate() == 0
    assert_learned_as_rivers_loop(dep.learner(), events)


def _owns_a_shard(worker: WorkerHandle) -> bool:
    log = worker.log()
    return "shard started fresh" in log or "shard restored" in log


class _Process(NamedTuple):
    """A process by its PID and start time, so that a reused PID is not taken for it."""

    pid: int
    start_ticks: int


def _state_and_start(pid: int) -> tuple[str, int]:
    """A process's state letter and start time (clock ticks after boot), from /proc."""
    # Fields 3 and 22 of /proc/<pid>/stat, counted after the name: it may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return fields[0], int(fields[19])


def _fetch_processes(worker_pid: int) -> list[_Process]:
    """The worker's own child processes that run ``stream.fetcher``."""
    found = []
    for children in Path(f"/proc/{worker_pid}/task").glob("*/children"):
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except OSError:  # the thread has ended
            continue
        for pid in pids:
            try:
                if b"livelearn.stream.fetcher" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(_Process(pid, _state_and_start(pid)[1]))
            except OSError:  # the child has exited
                continue
    return found


def _running(process: _Process) -> bool:
    """Whether ``process`` has not exited (a zombie has)."""
    try:
        state, start_ticks = _state_and_start(process.pid)
    except OSError:
        return False
    return state != "Z" and start_ticks == process.start_ticks


@each_consumer
def test_sigkill_at_several_points_learns_every_event_once(make_topic, deploy, consumer) -> None:
    topic = make_topic(partitions=1)
    dep = deploy(
        topic,
        checkpoint={"every_events": 37, "every_seconds": 0.3},
        settings={"kafka": consumer},
    )
    events = phishing_events(n=1000)
    producer = threading.Thread(
        target=produce, args=(dep.bootstrap, topic, encode(events)), kwargs={"rate": 150}
    )
    producer.start()
    rng = random.Random(7)
    fetchers: list[_Process] = []  # each worker's fetch processes, seen while it learns
    for kill_after in (150, 420, 700):
        worker = dep.start_worker()
        wait_for(lambda w=worker: _owns_a_shard(w), 90, "the worker to own the shard")
        wait_for(lambda k=kill_after: dep.next_offset() >= k, 90, f"offset {kill_after}")
        fetchers += _fetch_processes(worker.proc.pid)
        # Land the kill between checkpoints: events learned but not yet checkpointed.
        threading.Event().wait(rng.uniform(0.05, 0.25))
        worker.kill()
    producer.join()
    worker = dep.start_worker()
    wait_for(
        lambda: _owns_a_shard(worker), 90, "the last worker to own the shard", context=worker.tail
    )
    wait_for(lambda: dep.next_offset() == 1000, 120, "the last worker to reach the end")
    fetchers += _fetch_processes(worker.proc.pid)
    assert worker.terminate() == 0
    assert_learned_as_rivers_loop(dep.learner(), events)
    assert "shard restored" in worker.log()
    # One fetch process a worker, or none when the worker fetches itself; and nothing
    # outlives a worker, killed or stopped: its fetch process leaves with it.
    assert len(fetchers) == (4 if runs_a_fetch_process(consumer) else 0), fetchers
    wait_for(lambda: not any(_running(p) for p in fetchers), 10, "the fetch processes to exit")


def test_deferred_checkpoints_and_sigkill_learn_every_event_once(make_topic, deploy) -> None:
    """With ``checkpoint.max_share`` small enough to defer nearly every checkpoint due by
    count or by time (stream/_budget.py), a worker killed mid-stream twice and restarted
    still learns every event exactly once: a deferred checkpoint only means more to
    re-learn from the last one written."""
    topic = make_topic(partitions=1)
    dep = deploy(
        topic,
        checkpoint={"every_events": 37, "every_seconds": 0.3},
        settings={"checkpoint": {"max_share": 0.002}},
    )
    events = phishing_events(n=900)
    producer = threading.Thread(
        target=produce, args=(dep.bootstrap, topic, encode(events)), kwargs={"rate": 150}
    )
    producer.start()
    rng = random.Random(11)
    deferred = 0
    for kill_after in (200, 550):
        worker = dep.start_worker()
        wait_for(lambda w=worker: _owns_a_shard(w), 90, "the worker to own the shard")
        wait_for(lambda k=kill_after: dep.next_offset() >= k, 120, f"offset {kill_after}")
        threading.Event().wait(rng.uniform(0.05, 0.25))
        worker.kill()
        deferred += "checkpoints deferred" in worker.log()
    producer.join()
    worker = dep.start_worker()
    wait_for(
        lambda: _owns_a_shard(worker), 90, "the last worker to own the shard", context=worker.tail
    )
    wait_for(lambda: dep.next_offset() == 900, 180, "the last worker to reach the end")
    assert worker.terminate() == 0
    assert deferred >= 1, "the budget deferred no checkpoint: raise the stream's rate"
    assert_learned_as_rivers_loop(dep.learner(), events)


@pytest.mark.parametrize(
    "clients",
    [("kafka-python", "kafka-python"), ("confluent", "confluent"), ("kafka-python", "confluent")],
    ids=["kafka-python", "confluent", "one-of-each"],
)
def test_two_workers_one_stopped_midstream_every_event_once(make_topic, deploy, clients) -> None:
    """Two workers share the partitions, then one stops mid-stream and the other takes them
    over. One of each backend in one group: a deployment can move from one to the other
    worker by worker (both offer kafka-python's eager assignors)."""
    partitions = 4
    topic = make_topic(partitions=partitions)
    dep = deploy(topic, checkpoint={"every_events": 50, "every_seconds": 0.5})
    events = phishing_events(n=1200)
    producer = threading.Thread(
        target=produce,
        args=(dep.bootstrap, topic, encode(events)),
        kwargs={"partitions": partitions, "rate": 200},
    )
    producer.start()
    first, second = (dep.start_worker({"LIVELEARN_KAFKA__CLIENT": client}) for client in clients)

    wait_for(
        lambda: _owns_a_shard(first) and _owns_a_shard(second),
        90,
        "both workers to own shards",
        context=first.tail,
    )
    wait_for(
        lambda: sum(max(dep.next_offset(p), 0) for p in range(partitions)) >= 400,
        90,
        "both workers to learn",
    )
    assert first.terminate() == 0, first.tail()
    producer.join()
    per_partition = len(events) // partitions
    dep.wait_for_offsets(per_partition, partitions, 120, second)
    assert second.terminate() == 0
    learned = [dep.stats(p)["events_learned"] for p in range(partitions)]
    assert learned == [len(events) // partitions] * partitions
    assert second.proc.returncode == 0


def test_malformed_events_go_to_the_dlq_and_the_worker_goes_on(make_topic, deploy) -> None:
    topic = make_topic(partitions=1)
    dep = deploy(topic, settings={"events": {"max_bytes": 4096}})
    good = phishing_events(n=60)
    bad: list[tuple[bytes, str]] = [
        (b"{not json", "not_json"),
        (b'["a", "list"]', "not_object"),
        (orjson.dumps({"id": "m1", "label": True}), "missing_field"),
        (orjson.dumps({"features": {"a": 1.0}, "label": True}), "missing_field"),
        (orjson.dumps({"id": "t1", "features": {"a": [1, 2]}, "label": True}), "wrong_type"),
        (orjson.dumps({"id": "t2", "features": "x", "label": True}), "wrong_type"),
        (orjson.dumps({"id": "t3", "features": {"a": 1.0}, "label": {"y": 1}}), "wrong_type"),
        (b'{"id": "n1", "features": {"a": NaN}, "label": true}', "non_finite"),
        (b'{"id": "n2", "features": {"a": Infinity}, "label": true}', "non_finite"),
        (b'{"id": "n3", "features": {"a": 1e999}, "label": true}', "non_finite"),
        (orjson.dumps({"id": "b1", "features": {"a": "x" * 5000}, "label": True}), "too_large"),
        (
            orjson.dumps({"id": "ts", "ts": "yesterday", "features": {}, "label": True}),
            "bad_timestamp",
        ),
    ]
    values: list[bytes] = []
    expected_bad: dict[int, str] = {}
    bad_iter = iter(bad)
    for i, value in enumerate(encode(good)):
        values.append(value)
        if i % 5 == 4 and (item := next(bad_iter, None)) is not None:
            expected_bad[len(values)] = item[1]
            values.append(item[0])
    assert len(expected_bad) == len(bad)
    worker = dep.start_worker()
    produce(dep.bootstrap, topic, values)
    wait_for(lambda: dep.next_offset() == len(values), 60, "the worker to pass every event")
    assert worker.proc.poll() is None, "the worker exited on bad input"
    dead = read_all(dep.bootstrap, f"{topic}.dlq")
    got = {int(read_headers(r.headers)["source.offset"]): read_headers(r.headers) for r in dead}
    assert {k: v["reason"] for k, v in got.items()} == expected_bad
    for offset, headers in got.items():
        assert headers["source.topic"] == topic
        assert headers["source.partition"] == "0"
        assert headers["detail"]
        by_offset = {int(read_headers(r.headers)["source.offset"]): r.value for r in dead}
        assert by_offset[offset] == values[offset]
    assert worker.terminate() == 0
    assert dep.stats()["events_learned"] == len(good)


def test_tampered_snapshot_is_refused_and_counted(make_topic, deploy, redis_client) -> None:
    topic = make_topic(partitions=1)
    dep = deploy(topic)
    produce(dep.bootstrap, topic, encode(phishing_events(n=200)))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 200, 60, "a checkpoint at 200")
    assert worker.terminate() == 0
    key = dep.store.keys.shard(dep.model, topic, 0)
    blob = bytearray(redis_client.hget(key, "blob"))
    blob[len(blob) // 2] ^= 0x01
    redis_client.hset(key, "blob", bytes(blob))
    with pytest.raises(SnapshotRefused):
        dep.codec.decode(bytes(blob))

    worker = dep.start_worker()
    base = f"http://127.0.0.1:{worker.http_port}"
    sample = f'livelearn_snapshots_refused_total{{model="{dep.model}"}} 1.0'
    wait_for(lambda: sample in worker.metrics(), 60, "the refused-snapshot metric")
    assert "snapshot refused" in worker.log()

    def refused() -> list[str]:
        """The shards /readyz lists as refused (it answers 503 while any is)."""
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=2)
        except urllib.error.HTTPError as error:
            assert error.code == 503
            return list(json.loads(error.read())["refused_shards"])
        return []

    # The claim finishes just after the metric: then the shard is listed, and stays.
    wait_for(lambda: f"{dep.model}/{topic}/0" in refused(), 30, "the shard listed as refused")
    # Nothing was overwritten: the tampered blob and its offset are still there.
    assert redis_client.hget(key, "blob") == bytes(blob)
    assert worker.terminate() == 0
    assert dep.next_offset() == 200


def test_sigterm_writes_a_final_checkpoint_and_exits_zero(make_topic, deploy) -> None:
    topic = make_topic(partitions=1)
    # Only the shutdown can write: counts and time never trigger a checkpoint here.
    dep = deploy(topic, checkpoint={"every_events": 1_000_000, "every_seconds": 3600})
    worker = dep.start_worker()
    produce(dep.bootstrap, topic, encode(phishing_events(n=300)))
    sample = f'livelearn_events_total{{model="{dep.model}",outcome="learned"}} 300.0'
    wait_for(lambda: sample in worker.metrics(), 60, "300 events learned", context=worker.tail)
    assert dep.next_offset() == -1, worker.tail()
    assert worker.terminate() == 0, worker.tail()
    assert dep.next_offset() == 300, worker.tail()
    assert dep.stats()["events_learned"] == 300


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"pipeline": [{"class": "linear_model.NoSuchModel"}]}, "models[0].pipeline[0]"),
        ({"pipeline": [{"class": "os.system"}]}, "models[0].pipeline[0]"),
        ({"pipeline": [{"class": "subprocess.Popen"}]}, "models[0].pipeline[0]"),
        ({"topics": []}, "models[0].topics"),
    ],
    ids=["unknown-class", "outside-river", "outside-river-2", "no-topic"],
)
def test_config_errors_stop_startup_naming_the_setting(tmp_path, model, needle) -> None:
    import yaml

    spec = {"name": "bad", "topics": ["t"], "task": "binary", "pipeline": LOGREG_PIPELINE}
    spec.update(model)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": [spec]}))
    result = subprocess.run(
        [sys.executable, "-m", "livelearn.cli.main", "--config", str(path), "worker"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_sensitive_fields_never_reach_the_model_the_store_or_the_log(make_topic, deploy) -> None:
    from tests.integration.conftest import HASH_KEY, SNAPSHOT_KEY

    topic = make_topic(partitions=1)
    dep = deploy(
        topic,
        pipeline=[{"class": "tree.HoeffdingTreeClassifier"}],
        metrics=["Accuracy"],
        sanitize=[{"field": "email", "action": "hash"}, {"field": "name", "action": "drop"}],
    )
    events = phishing_events(n=200)
    for i, e in enumerate(events):
        e["features"] = {
            **e["features"],
            "email": f"user{i % 7}@example.com",
            "name": f"Person Number{i}",
        }
    produce(dep.bootstrap, topic, encode(events))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 200, 60, "200 events learned", context=worker.tail)
    assert worker.terminate() == 0
    checkpoint = dep.store.load(dep.shard())
    assert checkpoint is not None
    header_len = int.from_bytes(checkpoint.blob[7:11], "big")
    assert dep.codec.header(checkpoint.blob)["compressed"] == "none"
    payload = checkpoint.blob[11 + header_len : -32]
    for secret in (b"@example.com", b"Person Number", b"user3"):
        assert secret not in payload
    log = worker.log()
    for secret in ("@example.com", "Person Number", SNAPSHOT_KEY, HASH_KEY):
        assert secret not in log
    # The tree did learn from the keyed hash of the e-mail (same person, same value).
    hasher = Sanitizer([SanitizeRule(field="email", action="hash")], HASH_KEY.encode())
    assert hasher.hash_value("user3@example.com").encode() in payload
    assert dep.learner().stats()["events_learned"] == 200


def _models_command(dep: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``livelearn models ARGS`` on the deployment's settings; fails the test on an error."""
    config = str(dep.config_path)
    return subprocess.run(
        [sys.executable, "-m", "livelearn.cli.main", "--config", config, "models", *args],
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_models_show_json_lists_every_shard(make_topic, deploy) -> None:
    topic = make_topic(partitions=2)
    dep = deploy(topic)
    produce(dep.bootstrap, topic, encode(phishing_events(n=100)), partitions=2)
    worker = dep.start_worker()
    wait_for(
        lambda: dep.next_offset(0) == 50 and dep.next_offset(1) == 50,
        60,
        "both shards checkpointed",
        context=worker.tail,
    )
    assert worker.terminate() == 0
    out = _models_command(dep, "show", dep.model, "--json")
    desc = json.loads(out.stdout)
    assert desc["model"] == dep.model and desc["events_learned"] == 100
    assert [(s["topic"], s["partition"], s["next_offset"]) for s in desc["shards"]] == [
        (topic, 0, 50),
        (topic, 1, 50),
    ]
    shard = desc["shards"][0]
    assert set(shard) >= {
        "events_learned",
        "events_scored",
        "metrics",
        "rolling_metrics",
        "drift_detections",
        "epoch",
        "snapshot_bytes",
        "age_seconds",
        "version",
    }
    assert 0 <= shard["metrics"]["Accuracy"] <= 1 and shard["snapshot_bytes"] > 0
    listed = _models_command(dep, "list")
    assert f"{dep.model}: 2 shard(s), 100 learned" in listed.stdout


@pytest.mark.parametrize("after", [0.5, 1.5], ids=["while-importing", "while-connecting"])
def test_sigterm_during_start_up_exits_zero(make_topic, deploy, after) -> None:
    dep = deploy(make_topic(partitions=1))
    worker = dep.start_worker()
    threading.Event().wait(after)
    assert worker.terminate() == 0, worker.tail()
