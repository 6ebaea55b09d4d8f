"""Checkpoint cost of signed snapshots: the bound format (this build) against format 1.

A checkpoint is timed as the worker pays it: encode and sign, then write to Redis; a
restore as load from Redis, then verify and unpickle. Format 1 is the codec of the
revision ``--before`` (default: where this branch left main), read from git, so that
both run here on the same objects and the same Redis, rounds interleaved, medians shown.
The object is many 1 KiB byte strings: pickling it costs little, so the figures show
what signing and binding add rather than hide it behind pickle's own time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from livelearn.learners import SnapshotCodec
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId

_REPO = Path(__file__).resolve().parents[1]
_KEY = b"bench-snapshot-key-0123456789abcdef"
_STATS = {"events_learned": 1000, "metrics": {"Accuracy": 0.9}}


def _old_codec_module(rev: str) -> ModuleType:
    """``learners/snapshot.py`` as it was at ``rev``, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(_REPO), "show", f"{rev}:learners/snapshot.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as out:
        out.write(source)
    spec = importlib.util.spec_from_file_location("bench_snapshot_before", out.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(out.name)
    return module


def _payload(megabytes: int) -> dict[int, bytes]:
    return {i: os.urandom(1024) for i in range(megabytes * 1024)}


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def run(megabytes: int, rounds: int, before: ModuleType, client: redis.Redis) -> dict[str, Any]:
    """Median seconds of a checkpoint and a restore of ``megabytes``, before and after."""
    prefix = f"bench-snap-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore(client, prefix)
    shard = ShardId("bench", "t", 0)
    obj = _payload(megabytes)
    old, new = before.SnapshotCodec(_KEY), SnapshotCodec(_KEY)
    times: dict[str, list[float]] = {k: [] for k in ("save-1", "save-2", "load-1", "load-2")}
    size = {}
    try:
        epoch, _ = store.claim(shard)
        for _ in range(rounds):
            for fmt in ("1", "2"):
                if fmt == "1":
                    version = (store.versions([shard])[0] or 0) + 1
                    elapsed, _ = _timed(
                        lambda v=version: store.save(shard, epoch, old.encode(obj), 10, _STATS, v)
                    )
                else:
                    elapsed, _ = _timed(lambda: store.write(new, shard, epoch, obj, 10, _STATS))
                times[f"save-{fmt}"].append(elapsed)
                checkpoint = store.load(shard)
                assert checkpoint is not None
                size[fmt] = checkpoint.size

                def restore(fmt: str = fmt) -> object:
                    loaded = store.load(shard)
                    assert loaded is not None
                    if fmt == "1":
                        return old.decode(loaded.blob)
                    return new.decode(loaded.blob, loaded.binding())

                elapsed, restored = _timed(restore)
                assert len(restored) == len(obj)
                times[f"load-{fmt}"].append(elapsed)
    finally:
        client.delete(*(k for k in client.scan_iter(f"{prefix}:*")))
    return {"megabytes": megabytes, "size": size} | {
        k: statistics.median(v) for k, v in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench snapshot", description=__doc__)
    parser.add_argument("--before", default="main", help="git revision of format 1 (main)")
    parser.add_argument("--sizes", default="1,100", help="snapshot sizes in MB (1,100)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rev = subprocess.run(
        ["git", "-C", str(_REPO), "merge-base", "HEAD", args.before],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    before = _old_codec_module(rev)
    url = os.environ.get("LIVELEARN_REDIS__URL") or "redis://127.0.0.1:6379/0"
    client = redis.Redis.from_url(url)
    print(f"\ncheckpoint of a snapshot: format {before.SNAPSHOT_FORMAT} ({rev[:8]}) vs this build")
    print(
        f"median of {args.rounds} rounds, interleaved; Redis at {url}; {sys.version.split()[0]}\n"
    )
    head = f"{'MB':>5} {'bytes 1':>11} {'bytes 2':>11} {'save 1 ms':>10} {'save 2 ms':>10}"
    print(head + f" {'ratio':>6} {'load 1 ms':>10} {'load 2 ms':>10} {'ratio':>6}")
    for mb in (int(s) for s in args.sizes.split(",")):
        r = run(mb, args.rounds, before, client)
        print(
            f"{mb:>5} {r['size']['1']:>11} {r['size']['2']:>11} "
            f"{r['save-1'] * 1e3:>10.1f} {r['save-2'] * 1e3:>10.1f} "
            f"{r['save-2'] / r['save-1']:>6.2f} {r['load-1'] * 1e3:>10.1f} "
            f"{r['load-2'] * 1e3:>10.1f} {r['load-2'] / r['load-1']:>6.2f}"
        )
    client.close()


if __name__ == "__main__":
    main()
