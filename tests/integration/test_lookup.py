"""The lookup client against a real Redis (and, where a worker learns, a real Kafka)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from river import datasets

from livelearn import InvalidFeatures, ModelNotLoaded, UnknownModel
from livelearn.cli.main import main
from livelearn.learners import Learner, ModelSpec, SnapshotCodec, partition_for_key, predicted_class
from livelearn.serving import Lookup, ServingMetrics
from livelearn.serving import _loader as serving_loader
from livelearn.serving.api import create_app
from livelearn.settings import Settings, load_settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.releases import ReleaseStore
from tests.integration.conftest import (
    HASH_KEY,
    LOGREG_PIPELINE,
    SNAPSHOT_KEY,
    Deployment,
    encode,
    free_port,
    phishing_events,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

ROWS = list(datasets.Phishing())
PROBES = [x for x, _ in ROWS[1000:1020]]


def _spec(name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "topics": [f"{name}-in"],
        "task": "binary",
        "pipeline": LOGREG_PIPELINE,
        "metrics": ["Accuracy"],
        **overrides,
    }


def train(spec: ModelSpec, start: int, n: int) -> Learner:
    """A learner fed Phishing rows ``start`` to ``start + n`` in order."""
    learner = Learner(spec)
    for offset, (x, y) in enumerate(ROWS[start : start + n]):
        learner.process(x, y, offset)
    return learner


@dataclass
class Bench:
    """One test's model in Redis: settings, a checkpoint writer and lookups to close."""

    settings: Settings
    client: redis.Redis
    spec: ModelSpec
    store: RedisCheckpointStore
    codec: SnapshotCodec = field(default_factory=lambda: SnapshotCodec(SNAPSHOT_KEY.encode()))
    lookups: list[Lookup] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    @property
    def model(self) -> str:
        return self.spec.name

    def save(self, learner: Learner, partition: int = 0, topic: str | None = None) -> int:
        """Write ``learner`` as the shard's next checkpoint; return the version."""
        shard = ShardId(self.model, topic or self.spec.topics[0], partition)
        epoch, _ = self.store.claim(shard)
        return self.store.write(
            self.codec, shard, epoch, learner, learner.events_learned, learner.stats()
        )

    def releases(self) -> ReleaseStore:
        return ReleaseStore(
            self.client, self.store, SNAPSHOT_KEY.encode(), self.settings.redis.key_prefix
        )

    def lookup(self, start: bool = True) -> Lookup:
        lookup = Lookup(self.settings, metrics=ServingMetrics(self.registry))
        self.lookups.append(lookup)
        if start:
            lookup.start()
        return lookup

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"model": self.model, **labels}) or 0.0


def make_settings(redis_url: str, prefix: str, spec: dict[str, Any], check: float) -> Settings:
    return Settings(
        redis={"url": redis_url, "key_prefix": prefix},
        security={"snapshot_key": SNAPSHOT_KEY, "hash_key": HASH_KEY},
        serving={"reload_check_seconds": check},
        models=[spec],
    )


@pytest.fixture
def bench(
    services: Any, redis_client: redis.Redis, unique_name: str
) -> Iterator[Callable[..., Bench]]:
    """Factory: ``bench(check=30, **spec_overrides)``; a long check leaves reloads to the
    announcements."""
    made: list[Bench] = []

    def make(check: float = 30.0, redis_url: str | None = None, **overrides: Any) -> Bench:
        prefix = f"ll-{unique_name}"
        settings = make_settings(
            redis_url or services.redis_url, prefix, _spec(unique_name, **overrides), check
        )
        client = redis_client if redis_url is None else redis.Redis.from_url(redis_url)
        b = Bench(settings, client, settings.models[0], RedisCheckpointStore(client, prefix))
        made.append(b)
        return b

    yield make
    for b in made:
        for lookup in b.lookups:
            lookup.close()
        if b.client is not redis_client:
            b.client.close()


def same_proba(a: dict[Any, float] | None, b: dict[Any, float], tol: float = 1e-12) -> bool:
    return a is not None and a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in b)


# -- predictions equal the stored models' own ------------------------------------------


def _learned_by_worker(
    deploy: Callable[..., Deployment], topic: str, partitions: int, n: int
) -> Deployment:
    dep = deploy(topic)
    produce(dep.bootstrap, topic, encode(phishing_events(n)), partitions=partitions)
    worker = dep.start_worker()
    per_partition = n // partitions
    dep.wait_for_offsets(per_partition, partitions, 60, worker)
    assert worker.terminate() == 0
    return dep


def _lookup_for(dep: Deployment, monkeypatch: pytest.MonkeyPatch, services: Any) -> Lookup:
    for name, value in {
        "LIVELEARN_REDIS__URL": services.redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": SNAPSHOT_KEY,
        "LIVELEARN_SECURITY__HASH_KEY": HASH_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    lookup = Lookup(load_settings(dep.config_path))
    lookup.start()
    return lookup


def test_one_partition_model_predicts_as_the_stored_learner(
    deploy: Callable[..., Deployment],
    make_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    services: Any,
) -> None:
    dep = _learned_by_worker(deploy, make_topic(1), 1, 400)
    stored = dep.learner()
    with _lookup_for(dep, monkeypatch, services) as lookup:
        for x in PROBES:
            got = lookup.predict_one(dep.model, x)
            assert same_proba(got.proba, stored.predict_proba_one(x))
            assert got.prediction == predicted_class(got.proba or {})
            assert got.shards == {f"{dep.topic}/0": 400}
            assert got.release is None and got.task == "binary"
            assert 0 <= got.freshness_seconds < 60
        desc = lookup.describe(dep.model)
        assert desc["events_learned"] == 400
        assert desc["shards"][0]["version"] >= 1
        assert desc["shards"][0]["metrics"]["Accuracy"] == stored.stats()["metrics"]["Accuracy"]


def test_several_partitions_combine_as_documented(
    deploy: Callable[..., Deployment],
    make_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    services: Any,
) -> None:
    dep = _learned_by_worker(deploy, make_topic(3), 3, 600)
    stored = [dep.learner(p) for p in range(3)]
    weights = [dep.stats(p)["events_learned"] for p in range(3)]
    assert weights == [200, 200, 200]
    with _lookup_for(dep, monkeypatch, services) as lookup:
        for x in PROBES:
            parts = [learner.predict_proba_one(x) for learner in stored]
            classes = {c for p in parts for c in p}
            total = sum(weights)
            expected = {
                c: sum(w * p.get(c, 0.0) for p, w in zip(parts, weights, strict=True)) / total
                for c in classes
            }
            got = lookup.predict_one(dep.model, x)
            assert same_proba(got.proba, expected)
            best = max(expected.values())
            assert got.prediction == min(c for c, p in expected.items() if p == best)
            assert got.shards == {f"{dep.topic}/{p}": 200 for p in range(3)}


def test_route_by_key_answers_from_the_keys_partition(bench: Callable[..., Bench]) -> None:
    b = bench(route_by_key=True)
    learners = [train(b.spec, 0, 300), train(b.spec, 300, 50)]
    for partition, learner in enumerate(learners):
        b.save(learner, partition)
    lookup = b.lookup()
    x = PROBES[0]
    for key in ["alice", "bob", "carol", "dave", "erin"]:
        own = learners[partition_for_key(key.encode(), 2)]
        got = lookup.predict_one(b.model, x, key=key)
        assert got.proba == own.predict_proba_one(x)
        assert len(got.shards) == 1
    combined = lookup.predict_one(b.model, x)  # no key: every shard, weighted
    assert len(combined.shards) == 2
    weights = [300, 50]
    p = [learner.predict_proba_one(x)[True] for learner in learners]
    assert combined.proba is not None
    assert combined.proba[True] == pytest.approx((300 * p[0] + 50 * p[1]) / 350, abs=1e-12)
    assert sum(weights) == lookup.describe(b.model)["events_learned"]


def test_regression_combines_values(bench: Callable[..., Bench]) -> None:
    b = bench(
        task="regression",
        pipeline=[
            {"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LinearRegression"},
        ],
        metrics=["MAE"],
        drift=None,
    )
    spec = b.spec
    learners = []
    for partition, (start, n) in enumerate([(0, 200), (200, 100)]):
        learner = Learner(spec)
        for offset, (x, y) in enumerate(ROWS[start : start + n]):
            learner.process(x, float(y), offset)
        b.save(learner, partition)
        learners.append(learner)
    lookup = b.lookup()
    x = PROBES[3]
    got = lookup.predict_one(b.model, x)
    expected = (200 * learners[0].predict_one(x) + 100 * learners[1].predict_one(x)) / 300
    assert got.proba is None and got.task == "regression"
    assert got.prediction == pytest.approx(expected, abs=1e-12)


def test_errors_name_the_problem(bench: Callable[..., Bench]) -> None:
    b = bench()
    lookup = b.lookup()
    assert lookup.models() == [b.model]
    assert lookup.ready() == (False, {"redis": True, "models": {b.model: 0}, "refused_shards": {}})
    with pytest.raises(ModelNotLoaded, match="no shard"):
        lookup.predict_one(b.model, PROBES[0])
    b.save(train(b.spec, 0, 50))
    lookup.reload(b.model)
    assert lookup.ready()[0]
    with pytest.raises(UnknownModel, match="nope"):
        lookup.predict_one("nope", PROBES[0])
    with pytest.raises(KeyError):
        lookup.describe("nope")
    with pytest.raises(InvalidFeatures, match="mapping"):
        lookup.predict_one(b.model, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidFeatures, match="'a' is a list"):
        lookup.predict_one(b.model, {"a": [1]})
    with pytest.raises(InvalidFeatures, match="finite"):
        lookup.predict_one(b.model, {"a": float("nan")})
    with pytest.raises(InvalidFeatures, match=r"rows\[1\]"):
        lookup.predict_many(b.model, [PROBES[0], {"a": {}}])
    many = lookup.predict_many(b.model, PROBES[:5])
    assert [p.proba for p in many] == [lookup.predict_one(b.model, x).proba for x in PROBES[:5]]
    assert b.metric("livelearn_predictions_total") == 5 + 5


def test_features_are_sanitized_as_in_training(bench: Callable[..., Bench]) -> None:
    b = bench(
        pipeline=[
            {"class": "preprocessing.OneHotEncoder"},
            {"class": "linear_model.LogisticRegression"},
        ],
        sanitize=[{"field": "email", "action": "hash"}, {"field": "name", "action": "drop"}],
    )
    from livelearn.learners import Sanitizer

    sanitizer = Sanitizer(b.spec.sanitize, HASH_KEY.encode())
    learner = Learner(b.spec)
    for i in range(200):
        raw = {"email": f"u{i % 4}@x.org", "name": f"n{i}"}
        learner.process(sanitizer.apply(raw), i % 4 == 0, i)
    b.save(learner)
    lookup = b.lookup()
    raw = {"email": "u0@x.org", "name": "who"}
    got = lookup.predict_one(b.model, raw)
    assert got.proba == learner.predict_proba_one(sanitizer.apply(raw))
    assert got.proba != learner.predict_proba_one(raw)
    assert raw == {"email": "u0@x.org", "name": "who"}


# -- hot reload, tampering, Redis restarts ----------------------------------------------


def _offsets(lookup: Lookup, model: str) -> dict[str, int]:
    return lookup.predict_one(model, PROBES[0]).shards


def _settle(lookup: Lookup, b: Bench, shards: dict[Any, Any] | None = None) -> None:
    """Return once the lookup has ended a check of Redis begun after every write so far.

    A new release is announced on the model's channel behind every earlier message. Once
    the lookup lists a first such marker, a check that began after those writes is under
    way; once it lists a second, that check is over, since checks run one at a time.
    ``shards`` are frozen instead of the current checkpoints (a tampered one is not).
    """
    for _ in range(2):
        marker = b.releases().create(b.model, shards=shards, note="marker")
        wait_for(lambda m=marker: m in lookup.describe(b.model)["releases"], 5, "a marker")


@contextlib.contextmanager
def _redis_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Record what this thread asks of Redis inside the block, through any client.

    Each command or pipeline first takes a connection from its pool. The lookup's own
    thread, which keeps reconnecting meanwhile, is not recorded.
    """
    me = threading.get_ident()
    asked: list[Any] = []
    take = redis.ConnectionPool.get_connection

    def spy(pool: redis.ConnectionPool, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:
            asked.append(args)
        return take(pool, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(redis.ConnectionPool, "get_connection", spy)
        yield asked


def test_new_checkpoint_is_served_within_two_seconds_of_its_announcement(
    bench: Callable[..., Bench],
) -> None:
    b = bench(check=60)  # only the announcement can explain a reload
    b.save(train(b.spec, 0, 100))
    lookup = b.lookup()
    assert _offsets(lookup, b.model) == {f"{b.spec.topics[0]}/0": 100}
    newer = train(b.spec, 0, 300)
    b.save(newer)
    saved = time.monotonic()
    wait_for(lambda: _offsets(lookup, b.model)[f"{b.spec.topics[0]}/0"] == 300, 2, "hot reload")
    assert time.monotonic() - saved < 2
    assert lookup.predict_one(b.model, PROBES[1]).proba == newer.predict_proba_one(PROBES[1])
    assert b.metric("livelearn_serving_reloads_total", reason="announce") >= 1
    assert b.metric("livelearn_serving_reloads_total", reason="initial") == 1
    # Every reload that changed the state is timed, the initial one included.
    assert b.metric("livelearn_serving_reload_seconds_count") >= 2
    assert 0 <= b.metric("livelearn_model_freshness_seconds") < 5


def _hold_loads(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(entered, release): from now on, a reload that loads a snapshot sets ``entered`` and
    waits for ``release`` before it unpickles, as a slow Redis or a large tree would."""
    entered, release = threading.Event(), threading.Event()
    real = serving_loader.load_learner

    def held(codec: SnapshotCodec, blob: bytes, *args: Any, **kwargs: Any) -> Learner:
        entered.set()
        assert release.wait(30), "the test never released the reload"
        return real(codec, blob, *args, **kwargs)

    monkeypatch.setattr(serving_loader, "load_learner", held)
    return entered, release


def test_predictions_answer_from_the_served_state_while_a_reload_is_held(
    bench: Callable[..., Bench], monkeypatch: pytest.MonkeyPatch
) -> None:
    b = bench(check=60)
    old = train(b.spec, 0, 100)
    b.save(old)
    lookup = b.lookup()
    entered, release = _hold_loads(monkeypatch)
    try:
        new = train(b.spec, 0, 300)
        b.save(new)
        assert entered.wait(10), "the announcement did not start a reload"
        # The reload thread is inside the load: every prediction still answers, and from
        # the whole old state (one that waited for the reload would hang here).
        for x in PROBES:
            served = lookup.predict_one(b.model, x)
            assert served.shards == {f"{b.spec.topics[0]}/0": 100}
            assert served.proba == old.predict_proba_one(x)
    finally:
        release.set()
    wait_for(lambda: _offsets(lookup, b.model)[f"{b.spec.topics[0]}/0"] == 300, 5, "the swap")
    for x in PROBES:
        assert lookup.predict_one(b.model, x).proba == new.predict_proba_one(x)


def test_the_api_answers_while_a_reload_is_held(
    bench: Callable[..., Bench], monkeypatch: pytest.MonkeyPatch
) -> None:
    b = bench(check=60)
    b.save(train(b.spec, 0, 100))
    lookup = b.lookup()
    serving = b.settings.serving.model_copy(update={"tokens": [SecretStr("t")]})
    app = create_app(lookup, b.settings.model_copy(update={"serving": serving}), ServingMetrics())
    path, auth = f"/v1/models/{b.model}/predict", {"Authorization": "Bearer t"}
    shard = f"{b.spec.topics[0]}/0"
    entered, release = _hold_loads(monkeypatch)
    with TestClient(app) as client:
        try:
            b.save(train(b.spec, 0, 300))
            assert entered.wait(10), "the announcement did not start a reload"
            for x in PROBES:  # the event loop is not held up by the reload thread
                answer = client.post(path, json={"features": x}, headers=auth)
                assert answer.status_code == 200, answer.text
                assert answer.json()["shards"] == {shard: 100}
        finally:
            release.set()
        wait_for(lambda: _offsets(lookup, b.model)[shard] == 300, 5, "the swap")
        answer = client.post(path, json={"features": PROBES[0]}, headers=auth)
        assert answer.json()["shards"] == {shard: 300}


def test_tampered_blob_is_refused_and_the_last_good_version_serves(
    bench: Callable[..., Bench], redis_client: redis.Redis
) -> None:
    b = bench(check=0.2)  # the fallback check runs too: the refusal must still count once
    good = train(b.spec, 0, 200)
    b.save(good)
    lookup = b.lookup()
    before = lookup.predict_one(b.model, PROBES[0])
    shard_id = ShardId(b.model, b.spec.topics[0], 0)
    good_checkpoint = {shard_id: b.store.load(shard_id)}
    key = b.store.keys.shard(b.model, b.spec.topics[0], 0)
    blob = bytearray(redis_client.hget(key, "blob") or b"")
    blob[len(blob) // 2] ^= 0x01
    redis_client.hset(key, "blob", bytes(blob))
    version = redis_client.hincrby(key, "version", 1)
    redis_client.publish(
        b.store.channel(b.model),
        json.dumps(
            {"topic": b.spec.topics[0], "partition": 0, "next_offset": 999, "version": version}
        ),
    )
    wait_for(lambda: b.metric("livelearn_serving_snapshots_refused_total") == 1, 5, "the refusal")
    _settle(lookup, b, good_checkpoint)  # more checks of the bad version: counted once
    assert b.metric("livelearn_serving_snapshots_refused_total") == 1
    after = lookup.predict_one(b.model, PROBES[0])
    assert after == dataclasses.replace(before, freshness_seconds=after.freshness_seconds)
    assert lookup.describe(b.model)["shards"][0]["version"] == version - 1
    # a good checkpoint afterwards is served again
    b.save(train(b.spec, 0, 250))
    wait_for(lambda: _offsets(lookup, b.model)[f"{b.spec.topics[0]}/0"] == 250, 5, "recovery")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """A dedicated redis-server on a free port; calling the fixture (re)starts it."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        client = redis.Redis(port=port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, 10, "the dedicated redis-server")
        client.close()
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def test_redis_restart_serves_from_memory_then_resumes_reloading(
    bench: Callable[..., Bench],
    own_redis: Callable[[], subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = own_redis()
    url = f"redis://127.0.0.1:{own_redis.port}/0"  # type: ignore[attr-defined]
    b = bench(check=0.5, redis_url=url)
    first = train(b.spec, 0, 100)
    b.save(first)
    lookup = b.lookup()
    assert lookup.predict_one(b.model, PROBES[0]).proba == first.predict_proba_one(PROBES[0])

    server.terminate()
    server.wait(timeout=10)
    with _redis_requests(monkeypatch) as asked:
        during = lookup.predict_one(b.model, PROBES[0])
    assert asked == []  # answered from memory: no command, no reconnection attempt
    assert during.proba == first.predict_proba_one(PROBES[0])
    with _redis_requests(monkeypatch) as asked, pytest.raises(redis.ConnectionError):
        lookup.reload(b.model)  # a call that does ask Redis is recorded, and fails
    assert asked
    wait_for(
        lambda: (
            lookup.ready()
            == (False, {"redis": False, "models": {b.model: 1}, "refused_shards": {}})
        ),
        10,
        "ready() to report Redis away",
    )
    assert lookup.predict_one(b.model, PROBES[1]).proba == first.predict_proba_one(PROBES[1])

    own_redis()  # same port, empty: no persistence
    second = train(b.spec, 0, 300)
    b.save(second)  # version 1 again, a later time
    wait_for(
        lambda: _offsets(lookup, b.model)[f"{b.spec.topics[0]}/0"] == 300,
        8,
        "the lookup to pick up the checkpoint written after the restart",
    )
    assert lookup.predict_one(b.model, PROBES[0]).proba == second.predict_proba_one(PROBES[0])
    wait_for(lambda: lookup.ready()[0], 5, "ready() to recover")


# -- releases ---------------------------------------------------------------------------


def _served(lookup: Lookup, model: str, learner: Learner) -> bool:
    return lookup.predict_one(model, PROBES[0]).proba == learner.predict_proba_one(PROBES[0])


def test_release_promote_rollback_follow_change_what_is_served(bench: Callable[..., Bench]) -> None:
    b = bench()  # 30 s fallback: every switch comes from an announcement
    releases = b.releases()
    first, second, third = train(b.spec, 0, 100), train(b.spec, 0, 200), train(b.spec, 0, 300)
    b.save(first)
    one = releases.create(b.model, note="first")
    b.save(second)
    two = releases.create(b.model)
    b.save(third)
    lookup = b.lookup()
    assert _served(lookup, b.model, third)
    assert lookup.predict_one(b.model, PROBES[0]).release is None

    def serving(learner: Learner, release: int | None) -> bool:
        got = lookup.predict_one(b.model, PROBES[0])
        return got.release == release and got.proba == learner.predict_proba_one(PROBES[0])

    releases.promote(b.model, one)
    wait_for(lambda: serving(first, one), 2, "promote to release 1")
    assert lookup.describe(b.model)["release"] == one
    assert lookup.describe(b.model)["releases"] == [one, two]
    # The served release is the reference of "quality below the release" alerts.
    accuracy = first.stats()["metrics"]["Accuracy"]
    reference = {"release": str(one), "metric": "Accuracy"}
    assert b.metric("livelearn_release_reference_metric", **reference) == accuracy
    releases.follow(b.model)
    wait_for(lambda: serving(third, None), 2, "follow")
    assert b.metric("livelearn_release_reference_metric", **reference) == 0.0  # removed
    assert releases.rollback(b.model) == two  # from following: the newest release
    wait_for(lambda: serving(second, two), 2, "rollback to release 2")
    b.save(train(b.spec, 0, 400))  # a pinned model ignores new checkpoints
    _settle(lookup, b)
    assert serving(second, two)
    assert releases.rollback(b.model) == one
    wait_for(lambda: serving(first, one), 2, "rollback to release 1")
    assert b.metric("livelearn_serving_reloads_total", reason="pin") >= 4


def test_a_tampered_release_is_refused(
    bench: Callable[..., Bench], redis_client: redis.Redis
) -> None:
    b = bench()
    releases = b.releases()
    b.save(train(b.spec, 0, 100))
    number = releases.create(b.model)
    b.save(current := train(b.spec, 0, 200))
    lookup = b.lookup()
    key = b.store.keys.release(b.model, number)
    field_name = f"blob:{b.spec.topics[0]}/0"
    blob = bytearray(redis_client.hget(key, field_name) or b"")
    blob[-1] ^= 0xFF
    redis_client.hset(key, field_name, bytes(blob))
    releases.promote(b.model, number)
    wait_for(lambda: b.metric("livelearn_serving_snapshots_refused_total") == 1, 5, "refusal")
    assert _served(lookup, b.model, current)
    assert lookup.predict_one(b.model, PROBES[0]).release is None


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livelearn.cli.main", "--config", str(config), "models", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_release_commands(
    bench: Callable[..., Bench],
    services: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = bench()
    config = tmp_path / "livelearn.yaml"
    config.write_text(
        yaml.safe_dump(
            {"redis": {"key_prefix": b.settings.redis.key_prefix}, "serving": {"keep_releases": 3}}
        )
    )
    env = {
        "LIVELEARN_REDIS__URL": services.redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": SNAPSHOT_KEY,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    first, second = train(b.spec, 0, 100), train(b.spec, 0, 200)
    b.save(first)
    released = _cli(config, "release", b.model, "--note", "good one")
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == "1"
    b.save(second)
    lookup = b.lookup()
    assert _served(lookup, b.model, second)

    promoted = _cli(config, "promote", b.model, "1")
    assert promoted.returncode == 0, promoted.stderr
    wait_for(lambda: _served(lookup, b.model, first), 2, "promote via the CLI")
    assert lookup.predict_one(b.model, PROBES[0]).release == 1

    listed = _cli(config, "releases", b.model, "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["pinned"] == 1
    [row] = data["releases"]
    assert row["release"] == 1 and row["pinned"] and row["note"] == "good one"
    assert row["source"] == "live" and row["created_at"] > 0
    assert row["shards"] == [{"topic": b.spec.topics[0], "partition": 0, "next_offset": 100}]

    followed = _cli(config, "follow", b.model)
    assert followed.returncode == 0, followed.stderr
    wait_for(lambda: _served(lookup, b.model, second), 2, "follow via the CLI")

    rolled = _cli(config, "rollback", b.model)
    assert (rolled.returncode, rolled.stdout.strip()) == (0, "1"), rolled.stderr
    wait_for(lambda: _served(lookup, b.model, first), 2, "rollback via the CLI")

    # The rest in-process: each subprocess spends ~1.6 s importing River.
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config), "models", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("releases", b.model)
    assert code == 0 and "serving release 1" in out and "good one" in out
    code, _, err = run("promote", b.model, "7")
    assert code == 2 and "no release 7" in err and "releases: 1" in err
    code, _, err = run("rollback", b.model)
    assert code == 2 and "no release to roll back to from release 1" in err
    code, _, err = run("release", "no-such-model")
    assert code == 2 and "no checkpoints" in err
    for _ in range(4):  # keep_releases: 3, and the pinned release is never pruned
        assert run("release", b.model)[0] == 0
    assert b.releases().numbers(b.model) == [1, 3, 4, 5]
