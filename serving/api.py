"""The prediction API: FastAPI over a `Lookup`.

Routes::

    POST /v1/models/{name}/predict   one event {"features", "key"} or {"events": [...]}
    GET  /v1/models                  served models: task, release, freshness, events learned
    GET  /v1/models/{name}           a model's description (shards, offsets, metrics, releases)
    GET  /healthz                    the process answers
    GET  /readyz                     the lookup has its models (503 otherwise)
    GET  /metrics                    Prometheus text
    GET  /openapi.json               the schema, with the ``bearerAuth`` scheme

``create_app`` makes the app; ``serve`` runs it under uvicorn with the connection deadlines
of ``serving._server``.

Every ``/v1`` route wants ``Authorization: Bearer <token>`` with one of
``serving.tokens``: none or a malformed header gives 401, an unknown token 403.
Neither tokens nor features are ever logged.

A predict body is read as it streams in, refused past ``serving.max_body_bytes`` (413) or
``serving.body_timeout_seconds`` (408) before it is parsed, measured against
``serving.max_batch`` and ``serving.max_features`` before it is validated, and parsed,
validated and predicted in a thread when it is large, so that no request holds up the
others (``serving._body``). Every refusal is counted by its reason in
``livelearn_api_rejected_total``; the server itself bounds how long a connection may take
to send its headers, and how many connections one client may hold (``serving._server``).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
)

from livelearn.errors import InvalidFeatures, ModelNotLoaded, ServingError, UnknownModel
from livelearn.serving._body import BodyLimits, RequestRefused, decode_json, measure, read_body
from livelearn.serving._server import serve
from livelearn.serving.alerts import PrometheusAlerts
from livelearn.serving.lookup import Lookup, Prediction
from livelearn.serving.metrics import ServingMetrics
from livelearn.serving.prediction_log import PredictionLog
from livelearn.serving.ui import PAGE, PAGE_POLICY, StatusBoard
from livelearn.settings import Settings

__all__ = ["create_app", "serve"]

log = logging.getLogger("livelearn.api")

# Bodies and batches up to these sizes are parsed, validated and predicted on the event loop
# (each step is short: bench/bench_api.py measures it); larger ones go to a thread, where
# the interpreter switches to the loop between steps, so that one big body does not hold up
# every other request.
_INLINE_BODY_BYTES = 16 * 1024
_INLINE_BATCH = 32
# Large bodies worked on at once (the others wait their turn without a thread): the model
# code is Python, so more threads add no speed, only more contenders with the event loop
# for the interpreter's lock.
_LARGE_AT_ONCE = 2
# What a River model raises on features it cannot use; the caller's fault, so a 422.
_MODEL_ERRORS = (TypeError, ValueError, ArithmeticError)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

_T = TypeVar("_T")
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureValue = StrictBool | StrictInt | FiniteFloat | str | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Event(_Body):
    """One event to predict: its features and, for a model routed by key, its key."""

    features: dict[str, FeatureValue]
    key: str | None = None
    # Names the prediction in the prediction log: a delayed label for this id joins it.
    # Generated when the log is on and none is given; returned with the prediction.
    id: str | None = Field(None, min_length=1, max_length=256)


class Error(BaseModel):
    """An error answer."""

    detail: str


class ErrorItem(BaseModel):
    """One problem with a request: where (`loc`, from `body`), what, and its kind."""

    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """A request that cannot be used, one item a problem."""

    detail: list[ErrorItem]


class PredictionOut(BaseModel):
    """One prediction, with the model version it came from."""

    model: str
    task: str
    id: str | None = Field(
        None, description="the event's id (generated when the prediction log is on)"
    )
    prediction: StrictBool | StrictInt | float | str | None
    proba: dict[str, float | None] | None = Field(
        description="class probabilities, keyed by the class as a string; null for regression"
    )
    release: int | None = Field(description="the release served; null when following checkpoints")
    shards: dict[str, int] = Field(description='"topic/partition" -> next offset covered')
    freshness_seconds: float | None = Field(description="age of the newest checkpoint used")


class Predictions(BaseModel):
    """Predictions for a batch, in the order of its events."""

    predictions: list[PredictionOut]


class ModelSummary(BaseModel):
    """One served model."""

    model: str
    task: str
    loaded: bool = Field(description="whether any shard is loaded (else predictions get 503)")
    release: int | None
    freshness_seconds: float | None
    events_learned: int


class ModelList(BaseModel):
    """The served models."""

    models: list[ModelSummary]


class ShardState(BaseModel):
    """One served shard: the offset it covers, its counts, metrics and drift state."""

    model_config = ConfigDict(extra="allow")

    topic: str
    partition: int
    next_offset: int
    events_learned: int
    updated_at: float


class ModelDescription(BaseModel):
    """A model's shards, offsets, counts, metrics, drift state, freshness and releases."""

    model_config = ConfigDict(extra="allow")

    model: str
    task: str
    release: int | None = Field(description="the release served; null when following checkpoints")
    releases: list[int]
    shards: list[ShardState]
    freshness_seconds: float | None
    events_learned: int


class Health(BaseModel):
    """A health or readiness answer; further keys give details."""

    model_config = ConfigDict(extra="allow")

    ok: bool


_bearer = HTTPBearer(scheme_name="bearerAuth", auto_error=False)


async def _authorize(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The bearer token check as a dependency (``_bearer`` puts the scheme in the schema).

    A coroutine, though it never awaits: FastAPI runs a plain function dependency in its
    thread pool, and that hop on every request, each needing the interpreter's lock back,
    is what a reload's unpickling turned into the API's latency tail
    (bench/bench_api_load.py).
    """
    _check_token(request)


def _check_token(request: Request) -> None:
    """Let the request through with one of the app's tokens: 401 without one, 403 if wrong."""
    authorization = request.headers.get("Authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    given = credentials.encode()
    # Compare with every token, so the time taken says nothing about which one was close.
    matched = False
    for token in request.app.state.tokens:
        matched |= hmac.compare_digest(given, token)
    if not matched:
        raise HTTPException(403, "token not accepted")


def create_app(
    lookup: Lookup,
    settings: Settings,
    metrics: ServingMetrics,
    prediction_log: PredictionLog | None = None,
) -> FastAPI:
    """The API application serving ``lookup``.

    Parameters
    ----------
    lookup
        Started lookup client; the app neither starts nor closes it.
    settings
        ``serving.tokens`` are the accepted bearer tokens; ``serving.max_batch`` caps a batch.
    metrics
        Where requests and their latency are counted (the lookup counts predictions).
    prediction_log
        Where served predictions are written (``serving.prediction_log_topic``); None: off.
    """

    serving = settings.serving

    class Batch(_Body):
        """Several events, predicted in one call."""

        events: list[Event] = Field(min_length=1, max_length=serving.max_batch)

    def _kind(body: Any) -> str:
        return "batch" if isinstance(body, dict) and "events" in body else "event"

    PredictBody = Annotated[
        Annotated[Event, Tag("event")] | Annotated[Batch, Tag("batch")], Discriminator(_kind)
    ]
    body_type: TypeAdapter[Event | Batch] = TypeAdapter(PredictBody)
    limits = BodyLimits(
        serving.max_body_bytes,
        serving.body_timeout_seconds,
        serving.max_batch,
        serving.max_features,
    )

    app = FastAPI(
        title="livelearn prediction API",
        version="1",
        description="Predictions from models that keep learning from live events.",
        default_response_class=_JSONResponse,
    )
    app.state.tokens = [t.get_secret_value().encode() for t in serving.tokens]
    app.add_middleware(_RequestMetrics, metrics=metrics)
    _add_error_handlers(app, metrics)

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Error, "description": "no bearer token, or a malformed header"},
        403: {"model": Error, "description": "the token is not accepted"},
    }
    model_errors: dict[int | str, dict[str, Any]] = {
        **errors,
        404: {"model": Error, "description": "no such model"},
        503: {
            "model": Error,
            "description": "the model is not loaded yet",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    }
    predict_errors: dict[int | str, dict[str, Any]] = {
        **model_errors,
        408: {
            "model": Error,
            "description": "the body did not arrive within serving.body_timeout_seconds "
            "(the connection is closed)",
        },
        413: {
            "model": Error,
            "description": "the body is larger than serving.max_body_bytes: refused as soon "
            "as that is known, unparsed, and the connection closed",
        },
        422: {
            "model": InvalidRequest,
            "description": "a body that cannot be used; `type` says why: `not_json` (or not "
            "sent as application/json), `bad_encoding` (not UTF-8, or a lone surrogate "
            "escape), `too_deep` (arrays or objects nested too deeply), `too_many_digits` (a "
            "number of more than 4300 digits), `too_many_events` (a batch over "
            "serving.max_batch), `too_many_features` (an event over serving.max_features), a "
            "schema error, or `invalid_features` (the model cannot use them); `loc` says where",
        },
    }
    v1 = [Depends(_authorize)]
    body_schema = body_type.json_schema(ref_template="#/components/schemas/{model}")
    body_schemas = body_schema.pop("$defs", {})

    def parse(raw: bytes) -> Event | Batch:
        value = decode_json(raw)
        measure(value, limits)
        try:
            return body_type.validate_python(value)
        except ValidationError as exc:
            items = _error_items(exc.errors(include_url=False, include_input=False), "body")
            raise RequestRefused(422, "invalid_body", items) from None

    def answer(name: str, body: Event | Batch) -> Response:
        # Rendered here, in the thread for a large batch: FastAPI would check and render
        # the answer on the event loop (the route's response_model only documents it).
        if isinstance(body, Event):
            one = _guarded(lookup.predict_one, name, body.features, body.key)
            return _JSONResponse(served(body, one))
        rows = [e.features for e in body.events]
        keys = [e.key for e in body.events]
        many = _guarded(lookup.predict_many, name, rows, keys)
        return _JSONResponse(
            {"predictions": [served(e, p) for e, p in zip(body.events, many, strict=True)]}
        )

    def served(event: Event, prediction: Prediction) -> dict[str, Any]:
        """The answer for one event, written to the prediction log when it is on."""
        answer = _prediction(prediction)
        answer["id"] = event.id
        if prediction_log is not None:
            answer["id"] = event.id or uuid.uuid4().hex
            prediction_log.log(answer["id"], event.key, prediction.features, answer)
        return answer

    def _parse_and_answer(name: str, raw: bytes) -> Response:
        return answer(name, parse(raw))

    large = asyncio.Semaphore(_LARGE_AT_ONCE)

    # The token is checked in the route rather than by a dependency: FastAPI's dependency
    # solving was the largest share of a prediction's time on the event loop
    # (bench/bench_api_load.py profiles it); the schema names the scheme all the same.
    @app.post(
        "/v1/models/{name}/predict",
        responses=predict_errors,
        response_model=PredictionOut | Predictions,
        tags=["predictions"],
        openapi_extra={
            "security": [{"bearerAuth": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            },
        },
    )
    async def predict(name: str, request: Request) -> Response:
        """Predict one event, or a batch of events in order.

        A body is at most `serving.max_body_bytes` (default 1 MiB), arrives within
        `serving.body_timeout_seconds`, and holds at most `serving.max_batch` events of at
        most `serving.max_features` features each.
        """
        _check_token(request)
        raw = await read_body(request, limits)
        work: Callable[[], Response]
        if len(raw) > _INLINE_BODY_BYTES:
            work = functools.partial(_parse_and_answer, name, raw)
        else:
            body = parse(raw)
            if not isinstance(body, Batch) or len(body.events) <= _INLINE_BATCH:
                return answer(name, body)
            work = functools.partial(answer, name, body)
        async with large:
            return await run_in_threadpool(work)

    @app.get("/v1/models", dependencies=v1, responses=errors, tags=["models"])
    def list_models() -> ModelList:
        """The served models, with task, release, freshness and events learned."""
        return ModelList(models=[_summary(m, lookup.describe(m)) for m in lookup.models()])

    @app.get(
        "/v1/models/{name}",
        dependencies=v1,
        responses=model_errors,
        response_model=ModelDescription,
        tags=["models"],
    )
    def describe_model(name: str) -> dict[str, Any]:
        """A model's shards, offsets, events learned, metrics, drift, freshness and releases."""
        described: dict[str, Any] = _finite(lookup.describe(name))
        return described

    alerts = PrometheusAlerts(serving.alerts_url) if serving.alerts_url else None
    board = StatusBoard(
        lookup.models,
        lookup.describe,
        alerts=alerts.current if alerts is not None else None,
        timeline=lookup.timeline,
    )

    @app.get("/ui", include_in_schema=False)
    def status_page() -> HTMLResponse:
        """The status page: HTML and script only; its data comes from /v1/ui/status."""
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/v1/ui/status", dependencies=v1, responses=errors, tags=["models"])
    def ui_status() -> dict[str, Any]:
        """What the status page shows: every model with its history and firing alerts."""
        status: dict[str, Any] = _finite(board.status())
        return status

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Health:
        """The process answers."""
        return Health(ok=True)

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"model": Health, "description": "not ready"}},
    )
    def readyz() -> JSONResponse:
        """Ready when the lookup has loaded its models and Redis answers."""
        ok, details = lookup.ready()
        body = _finite({**details, "ok": ok})
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    def prometheus_metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The predict body is read by the route itself (FastAPI would parse and validate it on
    # the event loop), so its schemas join the components here, in the schema FastAPI
    # makes once and keeps.
    app.openapi()["components"]["schemas"].update(body_schemas)
    return app


class _JSONResponse(JSONResponse):
    """Starlette's JSON answer, except that a string UTF-8 cannot encode (a lone surrogate)
    is written with its ``\\u`` escape instead of failing the answer."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        )
        return text.encode("utf-8", "backslashreplace")


def _prediction(p: Prediction) -> dict[str, Any]:
    proba = None if p.proba is None else {str(k): _number(v) for k, v in p.proba.items()}
    prediction = p.prediction
    if isinstance(prediction, float):
        prediction = _number(prediction)
    elif not isinstance(prediction, bool | int | str | None):
        prediction = str(prediction)  # a class label of another type, e.g. numpy's
    return {
        "model": p.model,
        "task": p.task,
        "prediction": prediction,
        "proba": proba,
        "release": p.release,
        "shards": p.shards,
        "freshness_seconds": _number(p.freshness_seconds),
    }


def _summary(model: str, described: Mapping[str, Any]) -> ModelSummary:
    return ModelSummary(
        model=model,
        task=described["task"],
        loaded=bool(described["shards"]),
        release=described["release"],
        freshness_seconds=_number(described["freshness_seconds"]),
        events_learned=described["events_learned"],
    )


def _guarded(call: Callable[..., _T], model: str, *args: Any) -> _T:
    """``call(model, *args)``, with a model that fails on the features it is given (a string
    where it subtracts, a number too large for a float) turned into InvalidFeatures."""
    try:
        return call(model, *args)
    except ServingError:
        raise
    except _MODEL_ERRORS as exc:
        # The message may quote a feature value: it goes back to the caller, not to the log.
        log.warning(
            "the model could not predict from the features given",
            extra={"fields": {"model": model, "error": type(exc).__name__}},
        )
        raise InvalidFeatures(
            f"model {model!r} cannot predict from these features: {type(exc).__name__}: {exc}"
        ) from exc


def _number(value: Any) -> float | None:
    """A float, or None when it is missing or not finite (JSON has no NaN).

    >>> _number(0.25), _number(float("nan")), _number(None)
    (0.25, None, None)
    """
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float inside it replaced by None.

    >>> _finite({"a": [1.0, float("inf")], "b": {"c": float("nan")}})
    {'a': [1.0, None], 'b': {'c': None}}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _error_items(errors: Iterable[Mapping[str, Any]], *prefix: str) -> list[dict[str, Any]]:
    """Validation errors as answer items: ``loc``, ``msg`` and ``type`` only (the input is
    the caller's own, and may be large), every string one UTF-8 can encode.

    >>> errors = [{"loc": ("event", "\\ud800"), "msg": "Extra", "type": "x", "input": 1}]
    >>> _error_items(errors, "body")
    [{'loc': ['body', 'event', '\\\\ud800'], 'msg': 'Extra', 'type': 'x'}]
    """
    return [
        {
            "loc": [*prefix, *(_printable(p) for p in err["loc"])],
            "msg": _printable(str(err["msg"])),
            "type": str(err["type"]),
        }
        for err in errors
    ]


def _printable(value: Any) -> Any:
    """``value``, or for a string, the string with each lone surrogate as its escape."""
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _add_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestRefused)
        metrics.rejected.labels(exc.reason).inc()
        headers = {"Connection": "close"} if exc.close else None
        return _JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    async def unknown_model(request: Request, exc: Exception) -> JSONResponse:
        return _JSONResponse({"detail": str(exc)}, status_code=404)

    async def not_loaded(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ModelNotLoaded)
        retry_after = max(1, math.ceil(exc.retry_after))
        return _JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after)}
        )

    async def invalid_features(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidFeatures)
        metrics.rejected.labels("invalid_features").inc()
        loc = ["body", "features"] if exc.field is None else ["body", "features", exc.field]
        detail = _error_items([{"loc": loc, "msg": str(exc), "type": "invalid_features"}])
        return _JSONResponse({"detail": detail}, status_code=422)

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _JSONResponse({"detail": _error_items(exc.errors())}, status_code=422)

    app.add_exception_handler(RequestRefused, refused)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(UnknownModel, unknown_model)
    app.add_exception_handler(ModelNotLoaded, not_loaded)
    app.add_exception_handler(InvalidFeatures, invalid_features)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _RequestMetrics:
    """ASGI middleware: counts and times every request by route template, method and status.

    It also answers 500 for an exception no handler took, after logging where it was raised
    (the exception's type and traceback, not its message, which could quote a feature).
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_and_note(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            status = 500
            log.error(
                "request failed: %s",
                type(exc).__name__,
                extra={
                    "fields": {
                        "route": _route(scope),
                        "method": scope["method"],
                        "error": type(exc).__name__,
                        "traceback": "".join(traceback.format_tb(exc.__traceback__)),
                    }
                },
            )
            if not response_started:
                await JSONResponse({"detail": "internal error"}, status_code=500)(
                    scope, receive, send
                )
        finally:
            route = _route(scope)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    """The matched route's template, so that raw paths do not make new label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
