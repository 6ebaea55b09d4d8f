"""What ``WAIT`` for one replica adds to a checkpoint write, on a real Redis Cluster.

Starts a local 3-master, 3-replica cluster (`livelearn.devtools.redis_cluster`) unless
``--url`` names one, and times ``RedisCheckpointStore.save`` of the same signed snapshot with
``wait_replicas`` 0 and 1, rounds interleaved, for each snapshot size. Medians and 95th
percentiles of wall time, and the writing thread's CPU time (``time.thread_time``), which
the machine's other load disturbs less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from livelearn.settings import Settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.connection import redis_client


def _time_saves(store: RedisCheckpointStore, blob: bytes, n: int) -> tuple[list[float], float]:
    shard = ShardId(f"bench-{uuid.uuid4().hex[:6]}", "t", 0)
    epoch, _ = store.claim(shard)
    walls = []
    cpu = time.thread_time()
    for version in range(1, n + 1):
        started = time.perf_counter()
        store.save(shard, epoch, blob, version, {}, version)
        walls.append(time.perf_counter() - started)
    return walls, (time.thread_time() - cpu) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench wait", description=__doc__)
    parser.add_argument("--url", default="", help="redis+cluster:// URL (default: start one)")
    parser.add_argument("--sizes", default="1,100,1000", help="snapshot sizes in KiB")
    parser.add_argument("--writes", type=int, default=200, help="writes per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cluster = None
    url = args.url
    if not url:
        from livelearn.devtools.redis_cluster import RedisCluster

        state = Path(tempfile.mkdtemp(prefix="bench-wait-"))
        cluster = RedisCluster(state, port=int(os.environ.get("BENCH_REDIS_PORT", "17400")))
        cluster.up()
        url = cluster.url
    try:
        client = redis_client(Settings(redis={"url": url}))
        prefix = f"bench-wait-{uuid.uuid4().hex[:6]}"
        stores = {n: RedisCheckpointStore(client, prefix, wait_replicas=n) for n in (0, 1)}
        print(f"\ncheckpoint write with WAIT 0 vs WAIT 1; {args.rounds} rounds of {args.writes}")
        print(f"writes each, interleaved; Redis Cluster at {url.split(',')[0]}, ...; load "
              f"{os.getloadavg()[0]:.2f}\n")  # fmt: skip
        print(f"{'KiB':>6} {'p50 0 ms':>9} {'p50 1 ms':>9} {'+ms':>6} {'p95 0 ms':>9} "
              f"{'p95 1 ms':>9} {'cpu 0 ms':>9} {'cpu 1 ms':>9}")  # fmt: skip
        for kib in (int(s) for s in args.sizes.split(",")):
            blob = os.urandom(kib * 1024)
            walls: dict[int, list[float]] = {0: [], 1: []}
            cpus: dict[int, list[float]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for n, store in stores.items():
                    w, c = _time_saves(store, blob, args.writes)
                    walls[n] += w
                    cpus[n].append(c)
            p50 = {n: statistics.median(w) * 1e3 for n, w in walls.items()}
            p95 = {n: statistics.quantiles(w, n=20)[18] * 1e3 for n, w in walls.items()}
            cpu = {n: statistics.median(c) * 1e3 for n, c in cpus.items()}
            print(f"{kib:>6} {p50[0]:>9.3f} {p50[1]:>9.3f} {p50[1] - p50[0]:>6.3f} "
                  f"{p95[0]:>9.3f} {p95[1]:>9.3f} {cpu[0]:>9.3f} {cpu[1]:>9.3f}")  # fmt: skip
        client.close()
    finally:
        if cluster is not None:
            cluster.down()


if __name__ == "__main__":
    main()
