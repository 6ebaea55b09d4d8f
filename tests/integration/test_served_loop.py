"""The full loop on real servers: the API logs what it serves to Kafka, labels come later
for those ids, and a model learns from the log joined with them (served -> outcome ->
learned), on exactly the features that were served."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import orjson
import pytest
import yaml
from river import linear_model, metrics, optim, preprocessing

from livelearn.store.checkpoints import ShardId
from tests.integration.conftest import (
    LOGREG_PIPELINE,
    encode,
    phishing_events,
    produce,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_served_predictions_are_logged_and_learned_with_their_late_labels(
    make_topic, deploy
) -> None:
    topic, log_topic = make_topic(partitions=1), make_topic(partitions=1)
    dep = deploy(topic)
    # A second model learns from the prediction log, its labels arriving later.
    config = yaml.safe_load(dep.config_path.read_text())
    loop_model = f"{dep.model}-loop"
    config["models"].append(
        {
            "name": loop_model,
            "topics": [log_topic],
            "task": "binary",
            "pipeline": LOGREG_PIPELINE,
            "metrics": ["Accuracy", "LogLoss"],
            "delayed_labels": {},
            "checkpoint": {"every_events": 50, "every_seconds": 0.5},
        }
    )
    config["serving"] = {"prediction_log_topic": log_topic, "models": [dep.model]}
    dep.config_path.write_text(yaml.safe_dump(config))

    events = phishing_events(n=400)
    produce(dep.bootstrap, topic, encode(events[:200]))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 200, 60, "200 events learned", context=worker.tail)
    server = dep.start_server()
    server.wait_ready()
    asked = events[200:300]
    answers: list[dict[str, Any]] = []
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=5) as http:
        for i, event in enumerate(asked):
            body: dict[str, Any] = {"features": event["features"]}
            if i % 2:
                body["id"] = f"client-{i}"  # the caller's id; else one is generated
            r = http.post(f"/v1/models/{dep.model}/predict", json=body)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        batch = http.post(
            f"/v1/models/{dep.model}/predict",
            json={"events": [{"features": e["features"]} for e in events[300:310]]},
        )
        assert batch.status_code == 200, batch.text
    ids = [a["id"] for a in answers]
    assert len(set(ids)) == 100 and ids[1] == "client-1"

    logged = wait_for(
        lambda: (
            (rows := read_all(dep.bootstrap, log_topic, timeout=2)) and len(rows) >= 110 and rows
        ),
        30,
        "110 predictions logged",
    )
    records = [orjson.loads(r.value) for r in logged]
    assert [r["id"] for r in records[:100]] == ids
    for record, answer, event in zip(records, answers, asked, strict=False):
        assert record["features"] == event["features"]  # sanitized as served (no rules here)
        assert record["prediction"] == answer["prediction"] and record["model"] == dep.model
        assert logged[records.index(record)].key == record["id"].encode()
    assert 'livelearn_api_prediction_log_total{outcome="sent"} 110.0' in _metrics(server)

    # The outcomes, later, in another order, keyed as the predictions were.
    labels = [(answers[i]["id"], asked[i]["label"]) for i in range(99, -1, -1)]
    produce(
        dep.bootstrap,
        log_topic,
        [orjson.dumps({"id": i, "ts": int(time.time() * 1000), "label": y}) for i, y in labels],
    )
    shard = ShardId(loop_model, log_topic, 0)

    def joined() -> int:
        row = dep.store.describe(shard)
        return 0 if row is None else int(row["stats"].get("labels", {}).get("joined", 0))

    wait_for(lambda: joined() == 100, 60, "100 labels joined", context=worker.tail)
    assert worker.terminate() == 0
    checkpoint = dep.store.load(shard)
    assert checkpoint is not None
    learner = dep.codec.decode(checkpoint.blob)
    stats = learner.stats()
    assert stats["events_learned"] == 100 and stats["labels"]["pending"] == 10  # the batch
    # River's loop: each served event predicted when logged, learned when its label came.
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(0.1))
    accuracy = metrics.Accuracy()
    kept = {r["id"]: (r["features"], model.predict_proba_one(r["features"])) for r in records}
    for event_id, label in labels:
        x, proba = kept[event_id]
        accuracy.update(label, max(proba, key=proba.get) if proba else None)
        model.learn_one(x, label)
    assert math.isclose(stats["metrics"]["Accuracy"], accuracy.get(), abs_tol=1e-12)
    for event in events[350:360]:
        got = learner.predict_proba_one(event["features"])
        want = model.predict_proba_one(event["features"])
        assert all(math.isclose(got[k], want[k], abs_tol=1e-12) for k in want)


def _metrics(server: Any) -> str:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=5) as http:
        return http.get("/metrics").text
