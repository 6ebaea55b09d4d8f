"""The lookup client: a model's shards from Redis, verified, kept in memory, hot-reloaded.

``Lookup`` loads every shard of the served models, verifying each snapshot's signature
before it is unpickled, and answers predictions from memory. A background thread listens
to the models' update channels (a worker's checkpoint, a release, a pin) and, as a fallback
for a missed message or a dropped connection, checks the shards' versions every
``serving.reload_check_seconds``.

Concurrency: each model's state is one immutable ``_State``; a reload builds a new one (the
Redis reads and the unpickling happen outside any lock) and swaps the reference. Predictions
read the reference and never take a lock, so a reload holds them up no longer than that
swap (but note that unpickling a large tree holds Python's GIL while it runs). Reloads are
serialized among themselves by a lock that predictions never touch.

A refused blob (bad signature, unloadable) is logged with its shard and version and counted;
the shard's last good state keeps serving, and the same version is not tried again. A shard
that disappears from Redis (e.g. a Redis restarted without persistence) keeps serving its
last state.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from learners import (
    Learner,
    ModelSpec,
    Sanitizer,
    SnapshotCodec,
    combine_proba,
    combine_values,
    load_learner,
    partition_for_key,
    predicted_class,
)
from livelearn.errors import (
    ConfigError,
    InvalidFeatures,
    ModelNotLoaded,
    ReleaseError,
    ServiceUnavailable,
    SnapshotError,
    UnknownModel,
)
from serving.metrics import ServingMetrics
from settings import Settings
from store.checkpoints import RedisCheckpointStore, ShardId
from store.releases import ReleaseStore

__all__ = ["Lookup", "Prediction"]

log = logging.getLogger("livelearn.serving")

# One prediction in 16 is timed: a histogram observation costs about as much as a
# logistic-regression prediction, as in the worker's loop.
_LATENCY_SAMPLE = 16
# How long the listener waits for a message before it looks at the stop flag and the timer.
_LISTEN_SECONDS = 0.25
# Reconnection backoff of the background loop while Redis is away.
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0
# The client made from settings retries a failed command briefly: the loop has its own
# backoff, and redis-py's default (10 retries) would hide an outage from ready() for seconds.
_CLIENT_RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)
_SCALARS = (bool, int, float, str)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction and where it came from."""

    model: str
    task: str  # binary | multiclass | regression
    prediction: Any  # predicted class or value; None while no shard can predict
    proba: dict[Any, float] | None  # classification: class -> probability; None for regression
    release: int | None  # the release served, None when following the latest checkpoints
    shards: dict[str, int]  # "topic/partition" -> next_offset of each shard state used
    freshness_seconds: float  # age of the newest checkpoint used


@dataclass(frozen=True)
class _Shard:
    """One shard's learner and the checkpoint (or release entry) it came from."""

    id: ShardId
    learner: Learner
    next_offset: int
    version: int | None  # None for a release's shard
    updated_at: float
    stats: Mapping[str, Any]
    weight: float  # events learned
    name: str = field(init=False)  # "topic/partition"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.id.topic}/{self.id.partition}")


@dataclass(frozen=True)
class _State:
    """What one model serves; replaced whole, never changed."""

    spec: ModelSpec
    release: int | None
    shards: tuple[_Shard, ...]
    offsets: dict[str, int]
    newest: float  # updated_at of the newest shard; 0.0 when none
    # For a model routed by key: topic -> (partition count, shard by partition).
    routes: dict[str, tuple[int, dict[int, _Shard]]]

    @classmethod
    def build(cls, spec: ModelSpec, release: int | None, shards: Iterable[_Shard]) -> _State:
        ordered = tuple(sorted(shards, key=lambda s: s.id))
        routes: dict[str, tuple[int, dict[int, _Shard]]] = {}
        for shard in ordered:
            count, by_partition = routes.get(shard.id.topic, (0, {}))
            by_partition[shard.id.partition] = shard
            # Partitions are numbered from 0; a partition never checkpointed still counts.
            routes[shard.id.topic] = (max(count, shard.id.partition + 1), by_partition)
        return cls(
            spec,
            release,
            ordered,
            {s.name: s.next_offset for s in ordered},
            max((s.updated_at for s in ordered), default=0.0),
            routes,
        )

    def routed(self, key: str, retry_after: float) -> tuple[_Shard, ...]:
        """The shard of ``key``'s partition in each topic."""
        raw = key.encode()
        out = []
        for topic, (count, by_partition) in self.routes.items():
            partition = partition_for_key(raw, count)
            shard = by_partition.get(partition)
            if shard is None:
                raise ModelNotLoaded(
                    self.spec.name,
                    f"no checkpoint of {topic}/{partition} for key {key!r}",
                    retry_after,
                )
            out.append(shard)
        return tuple(out)


def _check_features(features: Any) -> Mapping[str, Any]:
    """``features`` when it maps names to finite scalars (as the event contract allows)."""
    if not isinstance(features, Mapping):
        raise InvalidFeatures(
            f"features must be a mapping of names to values, got {type(features).__name__}"
        )
    for name, value in features.items():
        if type(name) is not str:
            raise InvalidFeatures(f"feature name {name!r} is not a string", str(name))
        if type(value) is float or isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidFeatures(f"feature {name!r} is {value}: numbers must be finite", name)
        elif value is not None and not isinstance(value, _SCALARS):
            raise InvalidFeatures(
                f"feature {name!r} is a {type(value).__name__}: values must be numbers, "
                "strings, booleans or null",
                name,
            )
    return features


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
        client: redis.Redis | None = None,
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
        snapshot_key = settings.require_secret("snapshot_key")
        hashes = any(rule.action == "hash" for spec in specs.values() for rule in spec.sanitize)
        hash_key = settings.require_secret("hash_key") if hashes else b""
        self._settings = settings
        self._check_seconds = settings.serving.reload_check_seconds
        self._codec = SnapshotCodec(snapshot_key)
        self._metrics = metrics if metrics is not None else ServingMetrics()
        self._own_client = client is None
        self._client = client if client is not None else _client_from(settings)
        prefix = settings.redis.key_prefix
        self._store = RedisCheckpointStore(self._client, prefix)
        self._releases = ReleaseStore(
            self._client, self._store, snapshot_key, prefix, keep=settings.serving.keep_releases
        )
        self._sanitizers = {
            name: Sanitizer(spec.sanitize, hash_key) for name, spec in specs.items()
        }
        self._states: dict[str, _State] = {
            name: _State.build(spec, None, ()) for name, spec in specs.items()
        }
        self._release_numbers: dict[str, tuple[int, ...]] = {name: () for name in specs}
        self._channels = {self._store.channel(name): name for name in specs}
        self._refused: dict[ShardId, tuple[int, float]] = {}
        self._refused_releases: dict[str, int] = {}  # releases are immutable: refuse once
        self._counted = {name: self._metrics.predictions.labels(name) for name in specs}
        self._timed = {name: self._metrics.lookup_seconds.labels(name) for name in specs}
        for name in specs:
            self._metrics.freshness.labels(name).set_function(
                functools.partial(self._freshness, name)
            )
        self._sample = 0
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis_ok = False
        self._redis_seen = -math.inf

    def __repr__(self) -> str:
        return f"Lookup(models={self.models()!r})"

    # -- life cycle -------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """Load every shard, then keep them fresh from a background thread.

        With ``wait`` the first load happens here and a Redis that does not answer raises
        ``ServiceUnavailable``; without it the thread loads and retries until Redis answers.
        """
        if self._thread is not None:
            raise RuntimeError("this Lookup is already started")
        pubsub = None
        if wait:
            try:
                # Subscribed before loading: every checkpoint written after the load is heard.
                pubsub = self._subscribe()
                self._refresh_all("initial")
            except redis.RedisError as exc:
                _close_quietly(pubsub)
                raise ServiceUnavailable(
                    f"Redis does not answer ({exc}); the lookup cannot load its models"
                ) from None
        self._thread = threading.Thread(
            target=self._run, args=(pubsub,), name="livelearn-lookup", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread; close the Redis client if the lookup made it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.redis.socket_timeout_s + 5)
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
        if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Sequence):
            raise InvalidFeatures(
                f"rows must be a list of feature mappings, got {type(rows).__name__}"
            )
        if keys is not None and len(keys) != len(rows):
            raise InvalidFeatures(f"{len(keys)} keys for {len(rows)} rows: give one key a row")
        out = []
        for i, row in enumerate(rows):
            try:
                out.append(self._predict(state, row, None if keys is None else keys[i]))
            except InvalidFeatures as exc:
                raise InvalidFeatures(f"rows[{i}]: {exc}", exc.field) from None
        self._counted[model].inc(len(out))
        return out

    def _predict(self, state: _State, features: Mapping[str, Any], key: str | None) -> Prediction:
        spec = state.spec
        x = self._sanitizers[spec.name].apply(_check_features(features))
        if key is not None and spec.route_by_key:
            shards = state.routed(key, self._check_seconds)
            offsets = {s.name: s.next_offset for s in shards}
            newest = max(s.updated_at for s in shards)
        else:
            shards = state.shards
            if not shards:
                raise ModelNotLoaded(
                    spec.name, "no shard has a checkpoint yet", self._check_seconds
                )
            offsets = dict(state.offsets)
            newest = state.newest
        proba: dict[Any, float] | None
        if spec.task == "regression":
            proba = None
            value = combine_values([(s.learner.predict_one(x), s.weight) for s in shards])
        elif len(shards) == 1:
            # combine_proba of one part, without its allocations (they show in the p99
            # through the garbage collector); River's dict is fresh, so it is not copied.
            shard = shards[0]
            proba = shard.learner.predict_proba_one(x) if shard.weight > 0 else {}
            value = predicted_class(proba)
        else:
            proba = combine_proba([(s.learner.predict_proba_one(x), s.weight) for s in shards])
            value = predicted_class(proba)
        return Prediction(
            spec.name, spec.task, value, proba, state.release, offsets, time.time() - newest
        )

    # -- introspection ----------------------------------------------------------------

    def models(self) -> list[str]:
        """The served models' names."""
        return list(self._states)

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

        The details are ``{"redis": bool, "models": {name: shards loaded}}``. Predictions go
        on from memory while Redis is away, but the lookup is not ready then.
        """
        recent = 2 * self._check_seconds + self._settings.redis.socket_timeout_s
        redis_ok = self._redis_ok and time.monotonic() - self._redis_seen < recent
        loaded = {name: len(state.shards) for name, state in self._states.items()}
        return redis_ok and all(loaded.values()), {"redis": redis_ok, "models": loaded}

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

    def _refresh_all(self, reason: str) -> None:
        for name in self.models():
            self._refresh(name, reason)

    def _refresh(self, model: str, reason: str) -> None:
        """Bring ``model``'s state up to what Redis holds; swap it in if anything changed."""
        with self._reload_lock:
            current = self._states[model]
            pinned = self._releases.pinned(model)
            self._release_numbers[model] = tuple(self._releases.numbers(model))
            self._seen()
            if pinned is not None:
                if current.release != pinned and self._refused_releases.get(model) != pinned:
                    state = self._load_release(current.spec, pinned)
                    if state is not None:
                        self._swap(model, state, "pin" if reason != "initial" else reason)
                return
            following = current.release is None
            held = {s.id: s for s in current.shards} if following else {}
            ids = self._store.shards(model)
            changed = not following
            for shard_id, stamp in zip(ids, self._store.stamps(ids), strict=True):
                old = held.get(shard_id)
                if stamp is None or self._refused.get(shard_id) == stamp:
                    continue
                if old is not None and (old.version, old.updated_at) == stamp:
                    continue
                fresh = self._load_shard(shard_id)
                if fresh is not None:
                    held[shard_id] = fresh
                    changed = True
            self._seen()
            if changed:
                state = _State.build(current.spec, None, held.values())
                self._swap(model, state, reason if following or reason == "initial" else "pin")

    def _swap(self, model: str, state: _State, reason: str) -> None:
        self._states[model] = state
        self._metrics.reloads.labels(model, reason).inc()
        log.info(
            "serving %s %s",
            model,
            f"release {state.release}" if state.release is not None else "latest checkpoints",
            extra={"fields": {"model": model, "reason": reason, "shards": state.offsets}},
        )

    def _decode(self, model: str, where: str, blob: bytes) -> Learner | None:
        """The learner in ``blob``, or None (logged and counted) when the blob is refused."""
        try:
            return load_learner(self._codec, blob)
        except SnapshotError as exc:
            problem = str(exc)
        self._metrics.snapshots_refused.labels(model).inc()
        log.error(
            "snapshot refused: %s %s; the last good state keeps serving",
            where,
            problem,
            extra={"fields": {"model": model, "snapshot": where}},
        )
        return None

    def _load_shard(self, shard_id: ShardId) -> _Shard | None:
        checkpoint = self._store.load(shard_id)
        if checkpoint is None:
            return None
        where = f"{shard_id} version {checkpoint.version}"
        learner = self._decode(shard_id.model, where, checkpoint.blob)
        if learner is None:
            self._refused[shard_id] = (checkpoint.version, checkpoint.updated_at)
            return None
        return _Shard(
            shard_id,
            learner,
            checkpoint.next_offset,
            checkpoint.version,
            checkpoint.updated_at,
            checkpoint.stats,
            float(checkpoint.stats.get("events_learned", learner.events_learned)),
        )

    def _load_release(self, spec: ModelSpec, number: int) -> _State | None:
        """Release ``number`` as a state, or None (logged and counted) when it is refused."""
        try:
            release = self._releases.get(spec.name, number)
        except ReleaseError as exc:
            self._refused_releases[spec.name] = number
            self._metrics.snapshots_refused.labels(spec.name).inc()
            log.error(
                "release refused: %s; the current state keeps serving",
                exc,
                extra={"fields": {"model": spec.name, "release": number}},
            )
            return None
        shards = []
        for entry in release.shards.values():
            where = f"{entry.shard} of release {number}"
            learner = self._decode(spec.name, where, entry.blob)
            if learner is None:
                self._refused_releases[spec.name] = number
                return None
            weight = float(entry.stats.get("events_learned", learner.events_learned))
            shards.append(
                _Shard(
                    entry.shard,
                    learner,
                    entry.next_offset,
                    None,
                    entry.updated_at,
                    entry.stats,
                    weight,
                )
            )
        return _State.build(spec, number, shards)

    def _seen(self) -> None:
        self._redis_ok = True
        self._redis_seen = time.monotonic()

    # -- the background thread --------------------------------------------------------

    def _subscribe(self) -> Any:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(*self._channels)
        return pubsub

    def _run(self, pubsub: Any) -> None:
        """Listen for announcements and check versions periodically; reconnect with backoff."""
        loaded = pubsub is not None
        backoff = _BACKOFF_FIRST
        next_check = time.monotonic() + self._check_seconds
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._subscribe()
                    # Whatever was announced before the subscription (or while Redis was
                    # away) is caught by checking every version now.
                    self._refresh_all("poll" if loaded else "initial")
                    loaded = True
                    backoff = _BACKOFF_FIRST
                    next_check = time.monotonic() + self._check_seconds
                due = self._announced(pubsub)
                if time.monotonic() >= next_check:
                    for name in self._states:
                        due.setdefault(name, "poll")
                    next_check = time.monotonic() + self._check_seconds
                for name, reason in due.items():
                    self._refresh(name, reason)
            except (redis.RedisError, OSError) as exc:
                if self._redis_ok:
                    log.warning(
                        "Redis is away (%s); serving from memory and retrying",
                        exc,
                        extra={"fields": {"models": self.models()}},
                    )
                self._redis_ok = False
                _close_quietly(pubsub)
                pubsub = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception:
                log.exception("lookup reload failed; retrying")
                _close_quietly(pubsub)
                pubsub = None
                self._stop.wait(_BACKOFF_MAX)
        _close_quietly(pubsub)

    def _announced(self, pubsub: Any) -> dict[str, str]:
        """Models announced on their channels since the last call: model -> reload reason."""
        due: dict[str, str] = {}
        message = pubsub.get_message(timeout=_LISTEN_SECONDS)
        while message is not None:
            if message.get("type") == "message":
                channel = message["channel"]
                name = self._channels.get(
                    channel.decode() if isinstance(channel, bytes) else str(channel)
                )
                if name is not None:
                    due[name] = _reason(message["data"], due.get(name))
            message = pubsub.get_message(timeout=0)
        if due:
            self._seen()
        return due


def _reason(data: Any, earlier: str | None) -> str:
    """``pin`` for a pin or follow announcement, else ``announce``; a pin wins in a burst."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if earlier == "pin" or (isinstance(body, dict) and "pin" in body):
        return "pin"
    return "announce"


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.close()


def _client_from(settings: Settings) -> redis.Redis:
    from store.connection import redis_client

    return redis_client(settings, retry=_CLIENT_RETRY)
