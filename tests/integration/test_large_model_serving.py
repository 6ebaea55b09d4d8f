"""A large model loading in the lookup while another model answers (issue 19, item 4).

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
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from river import datasets

from bench._report import call_latencies
from livelearn.learners import Learner, SnapshotCodec
from livelearn.serving import Lookup, ServingMetrics
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

    linear = Learner(settings.model(small))
    rows = list(datasets.Phishing())
    for offset, (x, y) in enumerate(rows[:500]):
        linear.process(x, y, offset)
    save(linear, small)
    grown = Learner(settings.model(big))
    for offset, (x, y) in enumerate(_forest_events(3_000, seed=2)):
        grown.process(x, y, offset)
    save(grown, big)
    size = len(codec.encode(grown))
    assert size > 20_000_000, f"the forest's snapshot is only {size:,} bytes"

    registry = CollectorRegistry()
    lookup = Lookup(settings, metrics=ServingMetrics(registry))
    lookup.start()
    try:
        probe = rows[600][0]
        expected = linear.predict_proba_one(probe)

        def predict() -> None:
            assert lookup.predict_one(small, probe).proba == expected

        def reloads() -> float:
            labels = {"model": big, "reason": "announce"}
            return registry.get_sample_value("livelearn_serving_reloads_total", labels) or 0.0

        quiet = call_latencies(predict, lambda: True, 2.0)

        grown.process(*_forest_events(1, seed=3)[0], 3_000)
        before = reloads()
        writer = threading.Thread(target=save, args=(grown, big))
        writer.start()
        loading = call_latencies(predict, lambda: reloads() > before, 0.5)
        writer.join()
        assert lookup.describe(big)["events_learned"] == grown.events_learned

        load_s = (
            registry.get_sample_value("livelearn_serving_reload_seconds_sum", {"model": big}) or 0.0
        )
        # The initial load counts too: the reload took about half of the sum at least.
        print(
            f"\nsnapshot {size / 1e6:.0f} MB; predictions of the other model: p99 "
            f"{1e3 * _p99(quiet):.2f} ms quiet, {1e3 * _p99(loading):.2f} ms while it "
            f"loaded (max {1e3 * max(loading):.1f} ms, {len(loading):,} answers); the two "
            f"loads took {load_s:.2f} s"
        )
        # Answered all along: no answer waited for a sizeable part of the load.
        assert len(loading) > 100
        assert max(loading) < 0.25 * load_s / 2, (max(loading), load_s)
        assert _p99(loading) < 0.05
    finally:
        lookup.close()
