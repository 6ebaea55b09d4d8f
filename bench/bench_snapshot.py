"""Checkpoint cost of signed snapshots: the bound format (this build) against format 1.

A checkpoint is timed as the worker pays it: encode and sign, then write to Redis; a
restore as load from Redis, then verify and unpickle. Format 1 is the codec of the
revision ``--before`` (default: where this branch left main), read from git, so that
both run here on the same objects and the same Redis, rounds interleaved, medians shown.
The object is many 1 KiB byte strings: pickling it costs little, so the figures show
what signing and binding add rather than hide it behind pickle's own time. The codec
alone (encode, and verify with decode, no Redis) is timed too: on a busy machine the
Redis round trips of the full path vary more than the codecs differ.
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


def _codec_time(
    old: Any, new: SnapshotCodec, fmt: str, obj: object, checkpoint: Any, step: str
) -> float:
    """Seconds of the codec alone: encode ``obj``, or verify and decode the stored blob."""
    started = time.perf_counter()
    if fmt == "1":
        old.encode(obj) if step == "encode" else old.decode(checkpoint.blob)
    elif step == "encode":
        new.encode(obj, checkpoint.binding())
    else:
        new.decode(checkpoint.blob, checkpoint.binding())
    return time.perf_counter() - started


def run(megabytes: int, rounds: int, before: ModuleType, client: redis.Redis) -> dict[str, Any]:
    """Median seconds of a checkpoint and a restore of ``megabytes``, before and after."""
    prefix = f"bench-snap-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore(client, prefix)
    shard = ShardId("bench", "t", 0)
    obj = _payload(megabytes)
    old, new = before.SnapshotCodec(_KEY), SnapshotCodec(_KEY)
    keys = ("save", "load", "encode", "decode")
    times: dict[str, list[float]] = {f"{k}-{f}": [] for k in keys for f in "12"}
    size = {}
    try:
        epoch, _ = store.claim(shard)
        for n in range(rounds):
            for fmt in ("1", "2") if n % 2 else ("2", "1"):  # neither always goes first
                version = (store.versions([shard])[0] or 0) + 1

                def save(fmt: str = fmt, version: int = version) -> int:
                    if fmt == "1":
                        return store.save(shard, epoch, old.encode(obj), 10, _STATS, version)
                    return store.write(new, shard, epoch, obj, 10, _STATS)

                elapsed, _ = _timed(save)
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
                for step in ("encode", "decode"):
                    times[f"{step}-{fmt}"].append(_codec_time(old, new, fmt, obj, checkpoint, step))
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
    steps = ("save", "load", "encode", "decode")
    print(f"{'MB':>4} {'bytes 1':>10} {'bytes 2':>10}", end="")
    print("".join(f" {s + ' 1 ms':>12} {s + ' 2 ms':>12} {'ratio':>5}" for s in steps))
    for mb in (int(s) for s in args.sizes.split(",")):
        r = run(mb, args.rounds, before, client)
        print(f"{mb:>4} {r['size']['1']:>10} {r['size']['2']:>10}", end="")
        print(
            "".join(
                f" {r[s + '-1'] * 1e3:>12.1f} {r[s + '-2'] * 1e3:>12.1f}"
                f" {r[s + '-2'] / r[s + '-1']:>5.2f}"
                for s in steps
            )
        )
    client.close()


if __name__ == "__main__":
    main()
