"""The prediction API over a fake lookup: auth, validation, errors, limits, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from livelearn.errors import InvalidFeatures, ModelNotLoaded, UnknownModel
from livelearn.serving.api import _JSONResponse, create_app
from livelearn.serving.lookup import Prediction
from livelearn.serving.metrics import ServingMetrics
from livelearn.settings import Settings
from livelearn.store.timeline import TimelineRead

TOKEN = "t0k3n-unit-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREDICT = "/v1/models/{name}/predict"


class FakeLookup:
    """Answers like a Lookup serving ``phishing`` (loaded) and ``slow`` (still loading)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: list[str] = []  # the thread of each call
        self.ready_ok = True

    def _check(self, model: str) -> None:
        if model == "slow":
            raise ModelNotLoaded(model, "no shard is loaded yet", retry_after=2.5)
        if model == "broken":
            raise RuntimeError("a bug, with secret feature value 'hunter2'")
        if model != "phishing":
            raise UnknownModel(model, ["phishing", "slow"])

    def _predict(self, model: str, features: Mapping[str, Any]) -> Prediction:
        self._check(model)
        if "bad" in features:
            raise InvalidFeatures("feature 'bad' is not a number", field="bad")
        if isinstance(features.get("x"), str):  # as River does, subtracting a mean from it
            raise TypeError("unsupported operand type(s) for -: 'str' and 'float'")
        p = 0.75 if features.get("x", 0) else float("nan")
        return Prediction(
            model=model,
            task="binary",
            prediction=True,
            proba={True: p, False: 0.25},
            release=None,
            shards={"phishing/0": 42},
            freshness_seconds=0.5,
        )

    def predict_one(
        self, model: str, features: Mapping[str, Any], key: str | None = None
    ) -> Prediction:
        self.calls.append(("one", (model, dict(features), key)))
        self.threads.append(threading.current_thread().name)
        return self._predict(model, features)

    def predict_many(
        self,
        model: str,
        rows: Sequence[Mapping[str, Any]],
        keys: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        self.calls.append(("many", (model, len(rows), list(keys or []))))
        self.threads.append(threading.current_thread().name)
        return [self._predict(model, r) for r in rows]

    def models(self) -> list[str]:
        return ["phishing", "slow"]

    def describe(self, model: str) -> dict[str, Any]:
        if model == "slow":
            return {
                "model": model,
                "task": "regression",
                "release": None,
                "releases": [],
                "shards": [],
                "freshness_seconds": None,
                "events_learned": 0,
            }
        self._check(model)
        shard = {
            "topic": "phishing",
            "partition": 0,
            "next_offset": 42,
            "events_learned": 40,
            "updated_at": 1.7e9,
            "metrics": {"LogLoss": float("inf")},
        }
        return {
            "model": model,
            "task": "binary",
            "release": 3,
            "releases": [1, 2, 3],
            "shards": [shard],
            "freshness_seconds": 0.5,
            "events_learned": 40,
        }

    def timeline(self, model: str, after: str | None, count: int) -> TimelineRead:
        self._check(model)
        return TimelineRead([], None)  # no checkpoint written: an empty history

    def ready(self) -> tuple[bool, dict[str, object]]:
        return self.ready_ok, {"models": {"phishing": True}}


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup()


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics(CollectorRegistry())


@pytest.fixture
def client(lookup: FakeLookup, metrics: ServingMetrics) -> Iterator[TestClient]:
    settings = Settings(serving={"tokens": ["another-token-0000", TOKEN], "max_batch": 3})
    with TestClient(create_app(lookup, settings, metrics)) as c:  # type: ignore[arg-type]
        yield c


def _sample(metrics: ServingMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_one_event_is_predicted_with_its_version(client: TestClient, lookup: FakeLookup) -> None:
    body = {"features": {"x": 1.5, "country": "FR", "flag": True, "none": None}, "key": "k1"}
    r = client.post(PREDICT.format(name="phishing"), json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "phishing",
        "task": "binary",
        "id": None,  # only the prediction log generates one
        "prediction": True,
        "proba": {"True": 0.75, "False": 0.25},
        "release": None,
        "shards": {"phishing/0": 42},
        "freshness_seconds": 0.5,
    }
    assert lookup.calls == [("one", ("phishing", body["features"], "k1"))]


def test_a_batch_is_predicted_in_order(client: TestClient, lookup: FakeLookup) -> None:
    body = {"events": [{"features": {"x": 1}}, {"features": {"x": 0}, "key": "b"}]}
    r = client.post(PREDICT.format(name="phishing"), json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["proba"]["True"] for p in preds] == [0.75, None]  # NaN is not JSON: null
    assert lookup.calls == [("many", ("phishing", 2, [None, "b"]))]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": TOKEN}, 401),
        ({"Authorization": "Bearer wrong-token"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": "Bearer t\u00f6ken".encode()}, 403),
        ({"Authorization": "Bearer another-token-0000"}, 200),
    ],
    ids=["none", "basic", "empty", "no-scheme", "wrong", "longer", "non-ascii", "second-token"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/v1/models/phishing"), ("POST", "/v1/models/x/predict")],
    ids=["list", "show", "predict"],
)
def test_every_v1_route_wants_a_known_bearer_token(
    client: TestClient, headers: dict[str, Any], status: int, method: str, path: str
) -> None:
    body = {"features": {"x": 1}} if method == "POST" else None
    if method == "POST" and status == 200:
        path = "/v1/models/phishing/predict"
    r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"features": {"x": [1, 2]}}', "x"),
        ('{"features": {"x": {"y": 1}}}', "x"),
        ('{"features": {"x": NaN}}', "x"),
        ('{"features": {"x": Infinity}}', "x"),
        ('{"features": [1, 2]}', "features"),
        ('{"feature": {"x": 1}}', "features"),
        ('{"features": {"x": 1}, "label": true}', "label"),
        ('{"features": {"x": 1}, "key": 7}', "key"),
        ('{"events": []}', "events"),
        ('{"events": [{"features": {}}, {}, {"features": {}}]}', "features"),
        (
            '{"events": [{"features": {}}, {"features": {}}, {"features": {}}, {"features": {}}]}',
            "events",
        ),
        ('{"events": [{"features": {}}], "features": {}}', "features"),
        ("[1, 2]", "body"),
        ("not json", "body"),
        (b'{"features": {"x": "\xff"}}', "body"),
        ("", "body"),
    ],
    ids=[
        "list-value",
        "object-value",
        "nan",
        "infinity",
        "features-not-object",
        "misspelt",
        "extra-field",
        "key-not-string",
        "empty-batch",
        "batch-event-without-features",
        "batch-over-max",
        "batch-and-event",
        "not-object",
        "not-json",
        "not-utf8",
        "empty",
    ],
)
def test_invalid_bodies_get_422_naming_the_field(
    client: TestClient, lookup: FakeLookup, content: str | bytes, field: str
) -> None:
    r = client.post(
        PREDICT.format(name="phishing"),
        content=content,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    locs = [err["loc"] for err in r.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    assert lookup.calls == []


def test_features_the_model_refuses_get_422(client: TestClient) -> None:
    r = client.post(PREDICT.format(name="phishing"), json={"features": {"bad": 1}}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "features", "bad"]
    assert "not a number" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    "body",
    [{"features": {"x": "FR"}}, {"events": [{"features": {"x": 1}}, {"features": {"x": "FR"}}]}],
    ids=["one", "batch"],
)
def test_features_the_model_fails_on_get_422_not_500(
    client: TestClient, body: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    r = client.post(PREDICT.format(name="phishing"), json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "features"]
    assert "TypeError" in r.json()["detail"][0]["msg"]
    assert "FR" not in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/models/nope/predict", {"features": {"x": 1}}),
        ("POST", "/v1/models/nope/predict", {"events": [{"features": {"x": 1}}]}),
        ("GET", "/v1/models/nope", None),
    ],
    ids=["predict", "batch", "show"],
)
def test_an_unknown_model_is_404(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == 404
    assert r.json() == {"detail": "no served model named 'nope' (served: phishing, slow)"}


def test_a_model_not_loaded_yet_is_503_with_retry_after(client: TestClient) -> None:
    r = client.post(PREDICT.format(name="slow"), json={"features": {"x": 1}}, headers=AUTH)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "3"
    assert "cannot predict yet" in r.json()["detail"]


def test_a_bug_is_a_logged_500_without_the_message(
    client: TestClient, metrics: ServingMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="livelearn.api"):
        r = client.post(
            PREDICT.format(name="broken"), json={"features": {"x": "hunter2"}}, headers=AUTH
        )
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error"}
    [record] = caplog.records
    assert record.fields["error"] == "RuntimeError"  # type: ignore[attr-defined]
    assert "_check" in record.fields["traceback"]  # type: ignore[attr-defined]
    assert "hunter2" not in caplog.text and TOKEN not in caplog.text
    assert _sample(
        metrics,
        "livelearn_api_requests_total",
        route="/v1/models/{name}/predict",
        method="POST",
        status="500",
    )


def test_requests_are_counted_by_route_template(
    client: TestClient, metrics: ServingMetrics
) -> None:
    for name in ("phishing", "phishing", "nope"):
        client.post(PREDICT.format(name=name), json={"features": {"x": 1}}, headers=AUTH)
    client.post(
        PREDICT.format(name="phishing"), json={"events": [{"features": {}}] * 3}, headers=AUTH
    )
    client.get("/v1/models/phishing")
    client.get("/no/such/path")

    def requests(route: str, method: str, status: str) -> float:
        return _sample(
            metrics, "livelearn_api_requests_total", route=route, method=method, status=status
        )

    route = "/v1/models/{name}/predict"
    assert requests(route, "POST", "200") == 3
    assert requests(route, "POST", "404") == 1
    assert requests("/v1/models/{name}", "GET", "401") == 1
    assert requests("unmatched", "GET", "404") == 1
    assert _sample(metrics, "livelearn_api_request_seconds_count", route=route) == 4


def test_models_are_listed_and_described(client: TestClient) -> None:
    r = client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {
        "models": [
            {
                "model": "phishing",
                "task": "binary",
                "loaded": True,
                "release": 3,
                "freshness_seconds": 0.5,
                "events_learned": 40,
            },
            {
                "model": "slow",
                "task": "regression",
                "loaded": False,
                "release": None,
                "freshness_seconds": None,
                "events_learned": 0,
            },
        ]
    }
    r = client.get("/v1/models/phishing", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["releases"] == [1, 2, 3]
    assert r.json()["shards"][0]["metrics"] == {"LogLoss": None}


def test_health_readiness_and_metrics_need_no_token(client: TestClient, lookup: FakeLookup) -> None:
    assert client.get("/healthz").json() == {"ok": True}
    r = client.get("/readyz")
    assert (r.status_code, r.json()) == (200, {"ok": True, "models": {"phishing": True}})
    lookup.ready_ok = False
    assert client.get("/readyz").status_code == 503
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'livelearn_api_requests_total{method="GET",route="/readyz",status="200"} 1.0' in r.text


def test_the_openapi_schema_declares_bearer_auth_and_the_batch_limit(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    predict = schema["paths"]["/v1/models/{name}/predict"]["post"]
    assert predict["security"] == [{"bearerAuth": []}]
    assert {"401", "403", "404", "408", "413", "422", "503"} <= set(predict["responses"])
    for refusal in ("too_deep", "too_many_digits", "too_many_events", "too_many_features"):
        assert refusal in predict["responses"]["422"]["description"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [
        {"$ref": "#/components/schemas/Event"},
        {"$ref": "#/components/schemas/Batch"},
    ]
    assert schema["components"]["schemas"]["Batch"]["properties"]["events"]["maxItems"] == 3
    assert "security" not in schema["paths"]["/healthz"]["get"]


# -- limits: what a client cannot make the API do --------------------------------------

LIMITS = {"max_batch": 3, "max_features": 4, "max_body_bytes": 8192, "body_timeout_seconds": 0.2}


@pytest.fixture
def limited_app(lookup: FakeLookup, metrics: ServingMetrics) -> Any:
    settings = Settings(serving={"tokens": [TOKEN], **LIMITS})
    return create_app(lookup, settings, metrics)  # type: ignore[arg-type]


@pytest.fixture
def limited(limited_app: Any) -> Iterator[TestClient]:
    with TestClient(limited_app) as c:
        yield c


def _post(client: TestClient, content: bytes | str, **headers: str) -> Any:
    return client.post(
        PREDICT.format(name="phishing"),
        content=content,
        headers={**AUTH, "Content-Type": "application/json", **headers},
    )


@pytest.mark.parametrize(
    ("content", "reason", "loc", "words"),
    [
        ('{"features": {"a": 1.0}, "\\ud800": 1}', "bad_encoding", ["body"], "surrogate"),
        ('{"features": {"\\udc00x": 1.0}}', "bad_encoding", ["body"], "surrogate"),
        ('{"features": {"a": 1.0}, "key": "k\\ud83d"}', "bad_encoding", ["body"], "surrogate"),
        ("[" * 3000 + "]" * 3000, "too_deep", ["body"], "too deeply"),
        ('{"features": {"a": ' + "9" * 5000 + "}}", "too_many_digits", ["body"], "4300"),
        (
            json.dumps({"features": {f"f{i}": 1 for i in range(5)}}),
            "too_many_features",
            ["body", "event", "features"],
            "at most 4 features (serving.max_features), got 5",
        ),
        (
            json.dumps(
                {"events": [{"features": {}}, {"features": {f"f{i}": 1 for i in range(9)}}]}
            ),
            "too_many_features",
            ["body", "batch", "events", 1, "features"],
            "serving.max_features",
        ),
        # Four events that are not even events: the length is refused before any is looked at.
        ('{"events": [1, 2, 3, 4]}', "too_many_events", ["body", "batch", "events"], "got 4"),
        ('{"features": ', "not_json", ["body", 13], "line 1, column 14"),
        (b'{"features": {"x": "\xff"}}', "bad_encoding", ["body"], "UTF-8"),
        (
            '{"features": {"x": [1]}}',
            "invalid_body",
            ["body", "event", "features", "x", "bool"],
            "Input should be a valid boolean",
        ),
    ],
    ids=[
        "surrogate-extra-key",
        "surrogate-feature-name",
        "surrogate-key",
        "deep-nesting",
        "huge-int",
        "too-many-features",
        "too-many-features-in-batch",
        "batch-too-long",
        "truncated",
        "not-utf8",
        "schema",
    ],
)
def test_unusable_bodies_are_422_with_a_reason_and_counted(
    limited: TestClient,
    lookup: FakeLookup,
    metrics: ServingMetrics,
    content: str | bytes,
    reason: str,
    loc: list[Any],
    words: str,
) -> None:
    r = _post(limited, content)
    assert r.status_code == 422, r.text
    r.content.decode("utf-8")  # every answer is UTF-8, whatever the body held
    [item] = [i for i in r.json()["detail"] if i["loc"] == loc][:1]
    # A schema error keeps pydantic's own type (bool_type, missing, ...).
    assert item["type"] == reason or reason == "invalid_body"
    assert words in item["msg"]
    assert set(item) == {"loc", "msg", "type"}  # the input is never echoed
    assert _sample(metrics, "livelearn_api_rejected_total", reason=reason) == 1
    assert lookup.calls == []


@pytest.mark.parametrize(
    "content",
    ['{"features": {"\\ud83d\\ude00": 1.0}}', '{"features": {"\\\\ud800": 1.0}}'],
    ids=["escaped-pair", "escaped-backslash"],
)
def test_escapes_that_are_characters_are_accepted(
    limited: TestClient, lookup: FakeLookup, content: str
) -> None:
    r = _post(limited, content)
    assert r.status_code == 200, r.text
    assert lookup.calls[0][1][1] == json.loads(content)["features"]


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [("text/plain", "'text/plain'"), ("", "none")],
    ids=["text", "none"],
)
def test_a_body_not_sent_as_json_is_422(limited: TestClient, content_type: str, shown: str) -> None:
    r = _post(limited, '{"features": {}}', **{"Content-Type": content_type})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "not_json"
    assert f"(got {shown})" in r.json()["detail"][0]["msg"]


def test_an_oversized_body_is_413_before_it_is_parsed(
    limited: TestClient, lookup: FakeLookup, metrics: ServingMetrics
) -> None:
    r = _post(limited, "not JSON at all " * 600)  # 9600 bytes: a 422 had it been parsed
    assert r.status_code == 413
    assert r.json() == {
        "detail": "the body is larger than 8192 bytes (serving.max_body_bytes): "
        "send smaller batches"
    }
    assert _sample(metrics, "livelearn_api_rejected_total", reason="body_too_large") == 1
    assert lookup.calls == []


Message = dict[str, Any]


def _call(app: Any, receive: Callable[[], Any], headers: dict[str, str]) -> list[Message]:
    """Run one POST to the predict route through the ASGI app; the messages it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PREDICT.format(name="phishing"),
        "raw_path": PREDICT.format(name="phishing").encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("testclient", 1),
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in {**AUTH, "Content-Type": "application/json", **headers}.items()
        ],
        "state": {},
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _answer(sent: list[Message]) -> tuple[int, dict[bytes, bytes], Any]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(
    limited_app: Any, lookup: FakeLookup
) -> None:
    pulled = 0

    async def receive() -> Message:  # 1 KiB chunks, without end, and no Content-Length
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    status, _, body = _answer(_call(limited_app, receive, {}))
    assert status == 413, body
    assert pulled == 9  # 9 KiB is past the 8 KiB limit: nothing more was read
    assert lookup.calls == []


def test_a_slow_body_is_408_and_the_connection_closed(
    limited_app: Any, metrics: ServingMetrics
) -> None:
    chunks = [{"type": "http.request", "body": b'{"features": ', "more_body": True}]

    async def receive() -> Message:
        if chunks:
            return chunks.pop()
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    status, headers, body = _answer(_call(limited_app, receive, {}))
    assert status == 408
    assert headers[b"connection"] == b"close"
    assert body == {"detail": "the body did not arrive within 0.2 s (serving.body_timeout_seconds)"}
    assert _sample(metrics, "livelearn_api_rejected_total", reason="body_timeout") == 1


def test_a_client_that_leaves_mid_body_is_counted_not_an_error(
    limited_app: Any, metrics: ServingMetrics
) -> None:
    messages = [
        {"type": "http.disconnect"},
        {"type": "http.request", "body": b'{"features": ', "more_body": True},
    ]

    async def receive() -> Message:
        return messages.pop()

    status, _, _ = _answer(_call(limited_app, receive, {}))
    assert status == 499
    assert _sample(metrics, "livelearn_api_rejected_total", reason="client_disconnected") == 1
    route = "/v1/models/{name}/predict"
    assert _sample(
        metrics, "livelearn_api_requests_total", route=route, method="POST", status="499"
    )


def test_large_bodies_are_worked_on_off_the_event_loop(
    client: TestClient, lookup: FakeLookup
) -> None:
    small = {"events": [{"features": {"x": 1}}] * 3}
    large = {"features": {f"feature_{i:05}": 0.5 for i in range(1000)}}  # over 16 KiB
    for body in (small, large):
        r = client.post(PREDICT.format(name="phishing"), json=body, headers=AUTH)
        assert r.status_code == 200, r.text
    loop, worker = lookup.threads
    assert worker != loop and worker.startswith("AnyIO worker"), lookup.threads


def test_an_answer_never_fails_on_a_string_utf8_cannot_encode() -> None:
    rendered = _JSONResponse({"detail": [{"loc": ["body", "a\ud800"], "msg": "x"}]}).body
    assert json.loads(rendered.decode("utf-8")) == {
        "detail": [{"loc": ["body", "a\ud800"], "msg": "x"}]
    }
