"""The prediction API as a real ``livelearn serve`` process over real Redis (and Kafka)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from livelearn.learners import Learner, ModelSpec
from tests.integration.conftest import (
    Deployment,
    ServerHandle,
    encode,
    phishing_events,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration


def seed_model(dep: Deployment, n: int) -> list[dict[str, Any]]:
    """Train the deployment's model on ``n`` Phishing events in-process and checkpoint it into
    Redis as a worker would (partition 0, next offset ``n``); return the events."""
    spec = ModelSpec.model_validate(yaml.safe_load(dep.config_path.read_text())["models"][0])
    learner = Learner(spec)
    events = phishing_events(n)
    for offset, e in enumerate(events):
        learner.process(e["features"], e["label"], offset)
    epoch, _ = dep.store.claim(dep.shard())
    dep.store.write(dep.codec, dep.shard(), epoch, learner, n, learner.stats())
    return events


def serve_seeded(
    deploy: Callable[..., Deployment],
    name: str,
    events: int,
    serving: dict[str, Any] | None = None,
) -> Iterator[ServerHandle]:
    """For a fixture: a server (with ``serving`` settings) over a model of ``events``
    checkpointed straight into Redis (no Kafka needed); it must stop cleanly."""
    dep = deploy(f"{name}-topic", settings={"serving": serving} if serving else None)
    seed_model(dep, events)
    server = dep.start_server()
    server.wait_ready()
    yield server
    assert server.terminate() == 0, server.tail()


@pytest.fixture
def served(deploy: Callable[..., Deployment], unique_name: str) -> Iterator[ServerHandle]:
    """A server over a model checkpointed straight into Redis (no Kafka needed)."""
    yield from serve_seeded(deploy, unique_name, 200)


def test_prediction_follows_a_checkpoint_within_2_seconds(
    deploy: Callable[..., Deployment], make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    dep = deploy(topic)
    worker = dep.start_worker()
    events = phishing_events(300)
    produce(dep.bootstrap, topic, encode(events[:200]))
    wait_for(lambda: dep.next_offset() == 200, 60, "the first checkpoint", context=worker.tail)

    server = dep.start_server()
    server.wait_ready()
    probe = events[0]["features"]
    shard = f"{topic}/0"

    # Every checkpoint's time, by the offset it covers, as the worker writes them.
    written: dict[int, float] = {}
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            row = dep.store.describe(dep.shard())
            if row is not None:
                written.setdefault(int(row["next_offset"]), float(row["updated_at"]))
            time.sleep(0.005)

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=5) as http:

        def predict() -> dict[str, Any]:
            r = http.post(f"/v1/models/{dep.model}/predict", json={"features": probe})
            assert r.status_code == 200, r.text
            return dict(r.json())

        before = predict()
        assert before["shards"] == {shard: 200}
        assert before["release"] is None
        # Events like the probe, labelled against its prediction, pull the model away from it.
        flip = not before["prediction"]
        change = [
            {**e, "id": f"flip{i}", "features": probe, "label": flip}
            for i, e in enumerate(events[200:300])
        ]
        produce(dep.bootstrap, topic, encode(change))

        def changed() -> tuple[dict[str, Any], float] | None:
            now = predict()
            return (now, time.time()) if now["proba"] != before["proba"] else None

        after, seen_at = wait_for(changed, 30, "the prediction to change", every=0.01)
    stop.set()
    recorder.join()

    offset = after["shards"][shard]
    assert offset > 200
    assert offset in written, (offset, written)
    delay = seen_at - written[offset]
    assert 0 <= delay <= 2.0, f"visible {delay:.3f}s after its checkpoint"
    assert after["proba"][str(flip)] > before["proba"][str(flip)]
    assert server.terminate() == 0, server.tail()


def test_auth_and_input_errors(served: ServerHandle) -> None:
    with httpx.Client(base_url=served.url, timeout=5) as http:
        models = http.get("/v1/models", headers=served.auth).json()["models"]
        [name] = [m["model"] for m in models]
        path = f"/v1/models/{name}/predict"
        one = {"features": {"empty_server_form_handler": 0.5}}

        assert http.post(path, json=one, headers=served.auth).status_code == 200
        r = http.post(path, json=one)
        assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, "Bearer")
        assert (
            http.post(path, json=one, headers={"Authorization": "Bearer nope"}).status_code == 403
        )
        assert http.get("/v1/models").status_code == 401

        for body, field in [
            ({"features": {"x": [1]}}, "x"),
            ({"features": 3}, "features"),
            ({"feature": {}}, "features"),
            ({"features": {}, "label": True}, "label"),
            ({"events": []}, "events"),
        ]:
            r = http.post(path, json=body, headers=served.auth)
            assert r.status_code == 422, (body, r.text)
            assert any(field in err["loc"] for err in r.json()["detail"]), (body, r.text)
        r = http.post(
            path,
            content=b'{"features": {"x": NaN}}',
            headers={**served.auth, "Content-Type": "application/json"},
        )
        assert r.status_code == 422

        r = http.post("/v1/models/no-such-model/predict", json=one, headers=served.auth)
        assert r.status_code == 404
        assert http.get("/v1/models/no-such-model", headers=served.auth).status_code == 404


def test_schema_driven_requests_find_no_server_error(served: ServerHandle) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=5) as http:
        name = http.get("/v1/models").json()["models"][0]["model"]
    for result in schema.get_all_operations():
        operation = result.ok()
        path_parameters = {"name": name} if "{name}" in operation.path else None
        # Only the predict route takes input that can be wrong.
        modes = [GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            strategy = operation.as_strategy(mode, path_parameters=path_parameters)

            @given(case=strategy)
            @settings(
                max_examples=60,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Any) -> None:
                case.call_and_validate(headers=served.auth)

            call()

    with httpx.Client(base_url=served.url, timeout=5) as http:
        counted = http.get("/metrics").text
    predict = 'livelearn_api_requests_total{method="POST",route="/v1/models/{name}/predict"'
    for status in ("200", "401", "422"):  # the run reached the model, auth and validation
        assert f'{predict},status="{status}"}}' in counted, counted
    assert 'status="500"' not in counted
