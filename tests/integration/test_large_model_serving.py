"""A large model loading in the lookup and the API while another model answers (issue 19,
item 4).

The lookup loads and reloads in its background thread, outside any lock a prediction
takes, reading the blob with a Redis connection of its own and unpickling it with pauses
between pickle frames (serving/_loader.py): the other models' predictions, on the
caller's thread, keep answering while a large snapshot loads. bench/bench_bigmodel.py
measures the same at 150 MB, for the lookup and the API.
"""

from __future__ import annotations

import random
import statistics
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from river import datasets

from bench._report import call_latencies
from livelearn.learners import Binding, Learner, SnapshotCodec, stats_digest
from livelearn.serving import Lookup, ServingMetrics
from livelearn.serving.api import create_app
from livelearn.settings import Settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from tests.integration.conftest import HASH_KEY, LOGREG_PIPELINE, SNAPSHOT_KEY

pytestmark = pytest.mark.integration

FEATURES = 100


def _forest_events(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {f"f{j}": rng.random() for j in range(FEATURES)}
        out.append((x, x["f0"] + x["f1"] * x["f2"] + 0.3 * rng.random() > 0.8))
    return out


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_a_large_model_loads_while_another_model_keeps_answering(
    services: Any, redis_client: redis.Redis, unique_name: str
) -> None:
    prefix = f"ll-{unique_name}"
    small, big = f"{unique_name}-small", f"{unique_name}-big"
    forest = [{"class": "forest.ARFClassifier", "params": {"n_models": 10, "seed": 1}}]
    settings = Settings(
        redis={"url": services.redis_url, "key_prefix": prefix},
        security={"snapshot_key": SNAPSHOT_KEY, "hash_key": HASH_KEY},
        serving={"reload_check_seconds": 300},  # reloads on the announcement alone
        models=[
            {"name": small, "topics": [small], "task": "binary", "pipeline": LOGREG_PIPELINE},
            {"name": big, "topics": [big], "task": "binary", "pipeline": forest},
        ],
    )
    store = RedisCheckpointStore(redis_client, prefix)
    codec = SnapshotCodec(SNAPSHOT_KEY.encode())

    def save(learner: Learner, name: str) -> int:
        shard = ShardId(name, name, 0)
        epoch, _ = store.claim(shard)
        return store.write(codec, shard, epoch, learner, learner.events_learned, learner.stats())

    def prepared(learner: Learner, name: str) -> threading.Thread:
        """A thread that writes ``learner`` as the shard's next checkpoint, signed here
        first: only the Redis write and the lookup's reload run beside the predictions."""
        shard = ShardId(name, name, 0)
        epoch, stored = store.claim(shard)
        version = (stored.version if stored else 0) + 1
        stats, offset = learner.stats(), learner.events_learned
        binding = Binding(name, name, 0, offset, epoch, version, stats_digest(stats))
        blob = codec.encode(learner, binding)
        args = (shard, epoch, blob, offset, stats, version, codec.keys.active)
        return threading.Thread(target=store.save, args=args)

    linear = Learner(settings.model(small))
    rows = list(datasets.Phishing())
    for offset, (x, y) in enumerate(rows[:500]):
        linear.process(x, y, offset)
    save(linear, small)
    grown = Learner(settings.model(big))
    forest_events = _forest_events(3_002, seed=2)
    for offset, (x, y) in enumerate(forest_events[:3_000]):
        grown.process(x, y, offset)
    save(grown, big)
    size = len(codec.encode(grown))
    assert size > 20_000_000, f"the forest's snapshot is only {size:,} bytes"

    registry = CollectorRegistry()
    lookup = Lookup(settings, metrics=ServingMetrics(registry))
    lookup.start()
    serving = settings.serving.model_copy(update={"tokens": [SecretStr("t")]})
    app = create_app(lookup, settings.model_copy(update={"serving": serving}), ServingMetrics())
    probe = rows[600][0]
    expected = linear.predict_proba_one(probe)

    def reloaded() -> tuple[float, float]:
        """The big model's reloads on announcements, and their seconds in all."""
        count = registry.get_sample_value(
            "livelearn_serving_reloads_total", {"model": big, "reason": "announce"}
        )
        seconds = registry.get_sample_value("livelearn_serving_reload_seconds_sum", {"model": big})
        return count or 0.0, seconds or 0.0

    def while_loading(predict: Callable[[], object], offset: int) -> tuple[list[float], float]:
        """``predict``'s latencies with nothing loading, then while the forest's next
        version loads; and that load's seconds."""
        grown.process(*forest_events[offset], offset)
        writer = prepared(grown, big)
        quiet = call_latencies(predict, lambda: True, 2.0)
        count, seconds = reloaded()
        writer.start()
        loading = call_latencies(predict, lambda: reloaded()[0] > count, 0.5)
        writer.join()
        load_s = reloaded()[1] - seconds
        assert lookup.describe(big)["events_learned"] == grown.events_learned
        print(
            f"\n{size / 1e6:.0f} MB forest loading in {load_s:.2f} s; the linear model's "
            f"answers: p99 {1e3 * _p99(quiet):.2f} ms quiet, {1e3 * _p99(loading):.2f} ms "
            f"while it loaded (max {1e3 * max(loading):.1f} ms, {len(loading):,} answers)"
        )
        # Answered all along: no answer waited for a sizeable part of the load.
        assert len(loading) > 20
        assert max(loading) < 0.25 * load_s, (max(loading), load_s)
        assert _p99(loading) < 0.1
        return loading, load_s

    try:

        def from_lookup() -> None:
            assert lookup.predict_one(small, probe).proba == expected

        while_loading(from_lookup, 3_000)

        path, auth = f"/v1/models/{small}/predict", {"Authorization": "Bearer t"}
        with TestClient(app) as client:

            def from_api() -> None:
                answer = client.post(path, json={"features": probe}, headers=auth)
                assert answer.status_code == 200, answer.text
                assert answer.json()["proba"] == {str(k): v for k, v in expected.items()}

            while_loading(from_api, 3_001)
    finally:
        lookup.close()
