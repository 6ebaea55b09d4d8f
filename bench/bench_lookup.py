"""In-process lookup latency against River's bare ``predict_proba_one``, in one run.

For each spec (the worker bench's LogisticRegression and Hoeffding tree), a learner is
trained on the Phishing data set, checkpointed in Redis as one shard and loaded by a
``Lookup``; then ``Lookup.predict_one`` and the same model's bare ``predict_proba_one``
are timed call by call over the same probes. Target: LogisticRegression p99 <= 100 us.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from river import datasets

from bench.bench_worker import SPECS
from livelearn.learners import Learner, ModelSpec, SnapshotCodec
from livelearn.serving import Lookup
from livelearn.settings import Settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId

TARGET_P99_US = 100.0
_WARMUP = 2_000


def _timings(
    call: Callable[[dict[str, Any]], object], probes: list[dict[str, Any]], n: int
) -> list[float]:
    """Microseconds of each of ``n`` calls, cycling over ``probes``, after a warm-up."""
    for i in range(_WARMUP):
        call(probes[i % len(probes)])
    out = [0.0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        x = probes[i % len(probes)]
        started = clock()
        call(x)
        out[i] = (clock() - started) / 1000
    return out


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def _bench_spec(
    redis_url: str, label: str, body: dict[str, Any], rows: list[tuple[dict[str, Any], Any]], n: int
) -> tuple[float, float, float, float]:
    """(lookup p50, lookup p99, river p50, river p99) in microseconds."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis={"url": redis_url, "key_prefix": prefix},
        security={
            "snapshot_key": os.environ.get(
                "LIVELEARN_SECURITY__SNAPSHOT_KEY", uuid.uuid4().hex * 2
            ),
            "hash_key": os.environ.get("LIVELEARN_SECURITY__HASH_KEY", uuid.uuid4().hex * 2),
        },
        models=[{"name": "bench", "topics": ["bench"], **body}],
    )
    spec: ModelSpec = settings.models[0]
    learner = Learner(spec)
    for offset, (x, y) in enumerate(rows):
        learner.process(x, y, offset)
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisCheckpointStore(client, prefix)
        shard = ShardId("bench", "bench", 0)
        epoch, _ = store.claim(shard)
        codec = SnapshotCodec(settings.require_secret("snapshot_key"))
        store.write(codec, shard, epoch, learner, len(rows), learner.stats())
        probes = [x for x, _ in rows]
        with Lookup(settings, client=client) as lookup:
            lookup.start()
            # Steady state: let the background thread finish its first version check.
            time.sleep(0.5)
            served = lookup.predict_one("bench", probes[0])
            assert served.proba == learner.predict_proba_one(probes[0]), label
            looked = _timings(lambda x: lookup.predict_one("bench", x), probes, n)
        bare = _timings(learner.model.predict_proba_one, probes, n)
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    return _p(looked, 0.5), _p(looked, 0.99), _p(bare, 0.5), _p(bare, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000, help="timed calls a model")
    args, _ = parser.parse_known_args()  # `python -m bench` passes every bench's options
    redis_url = os.environ.get("LIVELEARN_REDIS__URL")
    if not redis_url:
        from livelearn.devtools import stack

        redis_url = stack.up().redis_url
    rows = list(datasets.Phishing())
    print(f"\nlookup latency, in-process predict_one, {args.calls} calls a model, 1 shard\n")
    print(
        f"{'model':36} {'lookup p50':>11} {'p99':>8} {'river p50':>10} {'p99':>8} "
        f"{'ratio p50':>10} {'p99':>6}"
    )
    for label, body in SPECS.items():
        lp50, lp99, rp50, rp99 = _bench_spec(redis_url, label, body, rows, args.calls)
        print(
            f"{label:36} {lp50:9.1f}us {lp99:6.1f}us {rp50:8.1f}us {rp99:6.1f}us "
            f"{lp50 / rp50:10.2f} {lp99 / rp99:6.2f}"
        )
    print(
        f"\ntarget: StandardScaler|LogisticRegression lookup p99 <= {TARGET_P99_US:.0f} us\n"
        "(ratio: lookup / River's bare predict_proba_one on the same model, same probes)"
    )


if __name__ == "__main__":
    main()
