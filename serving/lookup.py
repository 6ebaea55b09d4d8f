"""The lookup client: a model's shards from Redis, verified, kept in memory, hot-reloaded.

``Lookup`` loads every shard of the served models, verifying each snapshot's signature
before it is unpickled, and answers predictions from memory. A background thread listens
to the models' update channels (a worker's checkpoint, a release, a pin) and, as a fallback
for a missed message or a dropped connection, checks the shards' versions every
``serving.reload_check_seconds``.

Concurrency: each model's state is one immutable ``ServedState``; a reload builds a new one
(the Redis reads and the unpickling happen outside any lock predictions take) and swaps the
reference. Predictions read the reference and never take a lock, so a reload holds them up
no longer than that swap (but note that unpickling a large tree holds Python's GIL while it
runs). Reloads are serialized among themselves by a lock that predictions never touch.

A refused blob (bad signature, unloadable) is logged with its shard and version and counted;
the shard's last good state keeps serving, and the same version is not tried again. A shard
that disappears from Redis (e.g. a Redis restarted without persistence) keeps serving its
last state.

The parts, each in its own module: ``serving._state`` (a model's served state, key routing
and the combination of its shards), ``serving._features`` (the checks on features),
``serving._loader`` (shards and releases read from Redis and verified) and
``serving._reloader`` (the background thread).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from livelearn.errors import ConfigError, InvalidFeatures, UnknownModel
from livelearn.learners import ModelSpec, Sanitizer, Task, combine_metrics
from livelearn.serving._features import check_batch, check_features
from livelearn.serving._loader import StateLoader
from livelearn.serving._reloader import RedisContact, Reloader, ReloadReason
from livelearn.serving._state import ServedState, combine
from livelearn.serving.metrics import ServingMetrics
from livelearn.settings import Settings
from livelearn.store.connection import Client, checkpoint_store
from livelearn.store.releases import ReleaseStore
from livelearn.store.timeline import TimelineRead

__all__ = ["Lookup", "Prediction"]

log = logging.getLogger("livelearn.serving")

# One prediction in 16 is timed, so that timing adds little to a cheap prediction;
# bench/bench_lookup.py (`make bench`) measures what a prediction costs with it.
_LATENCY_SAMPLE = 16
# The client made from settings retries a failed command briefly: the reload thread has its
# own backoff, and redis-py's default retries would hide an outage from ready() for longer.
_CLIENT_RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)
# The metric label of a release's estimated accuracy (livelearn_release_reference_metric),
# the reference the live estimate is compared with (config/alerts.yml).
ESTIMATE_REFERENCE = "EstimatedAccuracy"


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction and where it came from."""

    model: str
    task: Task
    prediction: Any  # predicted class or value; None while no shard can predict
    proba: dict[Any, float] | None  # classification: class -> probability; None for regression
    release: int | None  # the release served, None when following the latest checkpoints
    shards: dict[str, int]  # "topic/partition" -> next_offset of each shard state used
    freshness_seconds: float  # age of the newest checkpoint used
    # The features predicted on, sanitized as in training (what the prediction log keeps).
    features: Mapping[str, Any] = field(default_factory=dict)


class Lookup:
    """Serve predictions of the models learned by the workers, from their Redis checkpoints.

    Parameters
    ----------
    settings
        Redis, security keys, the model specs and ``serving`` (models, reload check).
    models
        Model names to serve; default ``serving.models``, or every configured model.
    client
        A Redis client; default one made from ``redis.url`` (closed by ``close``).
    metrics
        Where to count; default a fresh ``ServingMetrics``.

    Raises
    ------
    UnknownModel
        A name in ``models`` is not a configured model.
    ConfigError
        ``security.snapshot_key`` (or ``hash_key`` for a model that hashes a field), or
        ``redis.url`` when no client is given, is not set.

    """

    def __init__(
        self,
        settings: Settings,
        *,
        models: Sequence[str] | None = None,
        client: Client | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        names = list(models) if models is not None else list(settings.serving.models)
        if not names:
            names = [spec.name for spec in settings.models]
        configured = [spec.name for spec in settings.models]
        specs: dict[str, ModelSpec] = {}
        for name in names:
            try:
                specs[name] = settings.model(name)
            except ConfigError:
                raise UnknownModel(name, configured) from None
        codec = settings.snapshot_codec()
        hashes = any(rule.action == "hash" for spec in specs.values() for rule in spec.sanitize)
        hash_key = settings.require_secret("hash_key") if hashes else b""
        self._settings = settings
        self._check_seconds = settings.serving.reload_check_seconds
        self._metrics = metrics if metrics is not None else ServingMetrics()
        self._own_client = client is None
        self._client = client if client is not None else _client_from(settings)
        prefix = settings.redis.key_prefix
        store = self._store = checkpoint_store(settings, self._client)
        self._releases = ReleaseStore(
            self._client,
            store,
            codec.keys,
            prefix,
            keep=settings.serving.keep_releases,
            accept_legacy=settings.security.accept_legacy_snapshots,
        )
        self._loader = StateLoader(store, self._releases, codec, self._metrics)
        self._sanitizers = {
            name: Sanitizer(spec.sanitize, hash_key) for name, spec in specs.items()
        }
        self._states: dict[str, ServedState] = {
            name: ServedState.build(spec, None, ()) for name, spec in specs.items()
        }
        self._release_numbers: dict[str, tuple[int, ...]] = {name: () for name in specs}
        # The release_metric labels exported for each model (see _export_reference).
        self._references: dict[str, list[tuple[str, str, str]]] = {}
        self._counted = {name: self._metrics.predictions.labels(name) for name in specs}
        self._timed = {name: self._metrics.lookup_seconds.labels(name) for name in specs}
        for name in specs:
            self._metrics.freshness.labels(name).set_function(
                functools.partial(self._freshness, name)
            )
        self._sample = 0
        self._reload_lock = threading.Lock()
        self._redis = RedisContact()
        self._reloader = Reloader(
            self._client,
            {store.channel(name): name for name in specs},
            self._refresh,
            self._check_seconds,
            self._redis,
        )

    def __repr__(self) -> str:
        return f"Lookup(models={self.models()!r})"

    # -- life cycle -------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """Load every shard, then keep them fresh from a background thread.

        With ``wait`` the first load happens here and a Redis that does not answer raises
        ``ServiceUnavailable``; without it the thread loads and retries until Redis answers.
        """
        if self._reloader.started:
            raise RuntimeError("this Lookup is already started")
        self._reloader.start(wait)

    def close(self) -> None:
        """Stop the background thread; close the Redis client if the lookup made it."""
        self._reloader.stop(timeout=self._settings.redis.socket_timeout_s + 5)
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Lookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- predictions (the hot path: no lock, no Redis) --------------------------------

    def predict_one(
        self, model: str, features: Mapping[str, Any], key: str | None = None
    ) -> Prediction:
        """Predict for one event's features.

        Parameters
        ----------
        model
            A served model's name.
        features
            The event's features, as in the event contract; sanitized as in training.
        key
            The event's key: for a model routed by key, only the key's shard answers.

        Raises
        ------
        UnknownModel
            No served model has that name.
        InvalidFeatures
            ``features`` is not a mapping of names to finite scalars.
        ModelNotLoaded
            No shard of the model (or not the key's shard) is loaded yet.

        Notes
        -----
        Classification: the shards' class probabilities are averaged, weighted by the events
        each learned (``learners.combine_proba``), and the prediction is the most probable
        class, a tie going to the first tied class in sorted order
        (``learners.predicted_class``). Regression: the weighted mean of the shards' outputs.

        """
        state = self._states.get(model)
        if state is None:
            raise UnknownModel(model, self.models())
        self._sample += 1
        if self._sample < _LATENCY_SAMPLE:
            out = self._predict(state, features, key)
        else:
            self._sample = 0
            started = time.perf_counter()
            out = self._predict(state, features, key)
            self._timed[model].observe(time.perf_counter() - started)
        self._counted[model].inc()
        return out

    def predict_many(
        self,
        model: str,
        rows: Sequence[Mapping[str, Any]],
        keys: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Predict for many events from one state of the model; see ``predict_one``.

        Raises
        ------
        InvalidFeatures
            ``rows`` is not a sequence, a row is invalid (the message gives its index), or
            ``keys`` is not as long as ``rows``.

        """
        state = self._states.get(model)
        if state is None:
            raise UnknownModel(model, self.models())
        check_batch(rows, keys)
        out = []
        for i, row in enumerate(rows):
            try:
                out.append(self._predict(state, row, None if keys is None else keys[i]))
            except InvalidFeatures as exc:
                raise InvalidFeatures(f"rows[{i}]: {exc}", exc.field) from None
        self._counted[model].inc(len(out))
        return out

    def _predict(
        self, state: ServedState, features: Mapping[str, Any], key: str | None
    ) -> Prediction:
        spec = state.spec
        x = self._sanitizers[spec.name].apply(check_features(features))
        shards, offsets, newest = state.answering(key, self._check_seconds)
        value, proba = combine(spec.task, shards, x)
        return Prediction(
            spec.name, spec.task, value, proba, state.release, offsets, time.time() - newest, x
        )

    # -- introspection ----------------------------------------------------------------

    def models(self) -> list[str]:
        """The served models' names."""
        return list(self._states)

    def timeline(self, model: str, after: str | None, count: int) -> TimelineRead:
        """``model``'s timeline from Redis (`RedisCheckpointStore.timeline`): its entries
        after the id ``after`` (its newest when None), at most ``count``, oldest first."""
        if model not in self._states:
            raise UnknownModel(model, self.models())
        return self._store.timeline(model, after, count)

    def describe(self, model: str) -> dict[str, Any]:
        """The served state of ``model`` as JSON-ready data (no Redis round trip).

        Keys: ``model``, ``task``, ``release`` (the release served, or None when following
        the latest checkpoints), ``releases`` (the release numbers last seen in Redis),
        ``shards`` (one row a shard served: topic, partition, next_offset, version — None for
        a release's shard —, events_learned, events_scored, metrics, rolling_metrics,
        drift_detections, drift_offsets, updated_at, age_seconds), ``freshness_seconds`` (age
        of the newest checkpoint served; None before any is loaded) and ``events_learned``.
        """
        state = self._states.get(model)
        if state is None:
            raise UnknownModel(model, self.models())
        now = time.time()
        shards = [
            {
                "topic": s.id.topic,
                "partition": s.id.partition,
                "next_offset": s.next_offset,
                "version": s.version,
                "events_learned": s.stats.get("events_learned", 0),
                "events_scored": s.stats.get("events_scored", 0),
                "metrics": s.stats.get("metrics", {}),
                "rolling_metrics": s.stats.get("rolling_metrics", {}),
                "drift_detections": s.stats.get("drift_detections", 0),
                "drift_offsets": s.stats.get("drift_offsets", []),
                # Present when the spec asks for them: label-free signals, delayed labels,
                # the holdout (None otherwise).
                "monitor": s.stats.get("monitor"),
                "labels": s.stats.get("labels"),
                "estimate": s.stats.get("estimate"),
                "holdout": s.stats.get("holdout"),
                "updated_at": s.updated_at,
                "age_seconds": round(now - s.updated_at, 3),
            }
            for s in state.shards
        ]
        return {
            "model": model,
            "task": state.spec.task,
            "release": state.release,
            "releases": list(self._release_numbers[model]),
            "shards": shards,
            "freshness_seconds": round(now - state.newest, 3) if state.shards else None,
            "events_learned": sum(row["events_learned"] for row in shards),
        }

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Whether Redis answered recently and every served model has a shard loaded.

        The details are ``{"redis": bool, "models": {name: shards loaded}, "refused_shards":
        {shard: why}}``. Predictions go on from memory while Redis is away, but the lookup
        is not ready then; a shard whose latest checkpoint is refused keeps its last good
        state and is listed.
        """
        recent = 2 * self._check_seconds + self._settings.redis.socket_timeout_s
        redis_ok = self._redis.answered_within(recent)
        loaded = {name: len(state.shards) for name, state in self._states.items()}
        details = {"redis": redis_ok, "models": loaded, "refused_shards": self._loader.refused()}
        return redis_ok and all(loaded.values()), details

    def _freshness(self, model: str) -> float:
        state = self._states[model]
        return time.time() - state.newest if state.shards else math.nan

    # -- reloading --------------------------------------------------------------------

    def reload(self, model: str | None = None) -> None:
        """Check the versions of ``model`` (default: every served model) now and reload.

        Raises
        ------
        UnknownModel
            ``model`` is not served.
        redis.RedisError
            Redis does not answer; what is in memory keeps serving.

        """
        if model is not None and model not in self._states:
            raise UnknownModel(model, self.models())
        for name in [model] if model is not None else self.models():
            self._refresh(name, "poll")

    def _refresh(self, model: str, reason: ReloadReason) -> None:
        """Bring ``model``'s state up to what Redis holds; swap it in if anything changed."""
        with self._reload_lock:
            started = time.perf_counter()
            current = self._states[model]
            pinned = self._releases.pinned(model)
            self._release_numbers[model] = tuple(self._releases.numbers(model))
            self._redis.seen()
            if pinned is not None:
                if current.release != pinned:
                    state = self._loader.release(current.spec, pinned)
                    if state is not None:
                        self._swap(model, state, "pin" if reason != "initial" else reason, started)
                return
            state = self._loader.latest(current)
            self._redis.seen()
            if state is not None:
                following = current.release is None
                why: ReloadReason = reason if following or reason == "initial" else "pin"
                self._swap(model, state, why, started)

    def _swap(self, model: str, state: ServedState, reason: ReloadReason, started: float) -> None:
        self._states[model] = state
        self._metrics.reload_seconds.labels(model).observe(time.perf_counter() - started)
        self._metrics.reloads.labels(model, reason).inc()
        self._export_reference(model, state)
        log.info(
            "serving %s %s",
            model,
            f"release {state.release}" if state.release is not None else "latest checkpoints",
            extra={"fields": {"model": model, "reason": reason, "shards": state.offsets}},
        )

    def _export_reference(self, model: str, state: ServedState) -> None:
        """A served release's metrics, for "quality below the release" alerts; nothing while
        the model follows its latest checkpoints."""
        gauge = self._metrics.release_metric
        for labels in self._references.pop(model, []):  # the earlier release's
            gauge.remove(*labels)
        if state.release is None:
            return
        weighted = combine_metrics(
            [
                (
                    {**s.stats.get("metrics", {}), **_estimate_reference(s.stats)},
                    s.stats.get("events_learned", 0),
                )
                for s in state.shards
            ]
        )
        exported = self._references[model] = []
        for metric, value in weighted.items():
            if value is not None:
                labels = (model, str(state.release), metric)
                gauge.labels(*labels).set(value)
                exported.append(labels)


def _estimate_reference(stats: Mapping[str, Any]) -> dict[str, float | None]:
    """A shard's accuracy estimated from its confidence when the release was made (the mean
    of its last closed windows' estimates), as the metric ``ESTIMATE_REFERENCE``; nothing
    for a model without the estimate, or a release made before it.

    >>> _estimate_reference({"estimate": {"reference": 0.9}}), _estimate_reference({})
    ({'EstimatedAccuracy': 0.9}, {})
    """
    reference = (stats.get("estimate") or {}).get("reference")
    return {} if reference is None else {ESTIMATE_REFERENCE: reference}


def _client_from(settings: Settings) -> Client:
    from livelearn.store.connection import redis_client

    return redis_client(settings, retry=_CLIENT_RETRY)
