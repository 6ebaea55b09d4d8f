"""The prediction API while one client address holds a thousand connections.

``livelearn serve`` (one uvicorn worker, default serving settings) serves a model
checkpointed straight into Redis. A separate process sends single-event predictions from
127.0.0.2 at a fixed rate (open loop, over a pool of keep-alive connections, a connection
replaced when the server closes it); meanwhile this process, from 127.0.0.1, opens 1,000
connections that send nothing and holds them for the header deadline, then 1,000 that
send half a request's head and holds those (``--sources N``: from N addresses in turn,
127.0.1.1 on, more than the server holds in all). The figures: the share of the ordinary
requests not answered 200, and their latency, in each phase.

    python -m bench.bench_api_connections [--rate 200] [--held 1000] [--phase 10] [--sources 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml
from river import datasets

from bench.bench_api import PIPELINE, TOKEN, _free_port, _percentile, _wait, stop
from bench.bench_worker import services
from livelearn.learners import Learner, ModelSpec, SnapshotCodec
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId

ORDINARY = "127.0.0.2"
HOSTILE = "127.0.0.1"
POOL = 8  # keep-alive connections of the ordinary client
HALF_HEAD = b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: appl"


# -- the ordinary client (runs in its own process) ----------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """One request on a keep-alive connection: its status, and whether the server keeps
    the connection open."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    await reader.readexactly(length)
    return int(head[9:12]), not close


async def _ordinary(port: int, path: str, body: bytes, rate: float, seconds: float) -> Any:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(ORDINARY, 0))

    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
    for _ in range(POOL):
        pool.put_nowait(await connect())
    loop = asyncio.get_running_loop()
    print("ready", flush=True)  # the phases count from here
    started = loop.time()
    results: list[tuple[float, str, float]] = []  # due (s from start), status, latency

    async def one(due: float) -> None:
        conn = await pool.get()
        status, keep = "error", False
        try:
            conn = conn or await asyncio.wait_for(connect(), 10)
            code, keep = await asyncio.wait_for(_exchange(*conn, request), 10)
            status = str(code)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            status = type(exc).__name__
        results.append((due - started, status, loop.time() - due))
        if not keep and conn is not None:
            conn[1].close()
        pool.put_nowait(conn if keep else None)

    tasks = []
    i = 0
    while (due := started + i / rate) < started + seconds:
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one(due)))
        i += 1
    await asyncio.gather(*tasks)
    return results


def ordinary_main() -> None:
    """Entry point of the ordinary client's process: arguments in argv[1] as JSON."""
    opts = json.loads(sys.argv[1])
    results = asyncio.run(_ordinary(**{**opts, "body": opts["body"].encode()}))
    print(json.dumps(results))


# -- the hostile client ---------------------------------------------------------------------


def hold(port: int, n: int, send: bytes, sources: list[str]) -> tuple[list[socket.socket], int]:
    """Open ``n`` connections from ``sources`` in turn, sending ``send``; the sockets, and
    how many the server refused or closed at once."""
    socks = []
    for i in range(n):
        source = sources[i % len(sources)]
        sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        with contextlib.suppress(OSError):  # refused and closed already
            sock.sendall(send)
        socks.append(sock)
    time.sleep(0.5)
    refused = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)  # an answer, or closed
        except BlockingIOError:
            continue  # held open
        except OSError:
            pass  # reset
        refused += 1
    return socks, refused


# -- the system under test ------------------------------------------------------------------


def seed(redis_url: str, name: str, key: bytes, spec: dict[str, Any]) -> None:
    """Checkpoint a model learned from 200 Phishing events, as a worker would."""
    learner = Learner(ModelSpec.model_validate(spec))
    for offset, (x, y) in enumerate(list(datasets.Phishing())[:200]):
        learner.process(x, y, offset)
    store = RedisCheckpointStore(redis.Redis.from_url(redis_url), name)
    shard = ShardId(name, spec["topics"][0], 0)
    epoch, _ = store.claim(shard)
    store.write(SnapshotCodec(key), shard, epoch, learner, 200, learner.stats())


def phases(results: list[list[Any]], bounds: dict[str, tuple[float, float]]) -> None:
    for phase, (start, end) in bounds.items():
        rows = [r for r in results if start <= r[0] < end]
        if not rows:
            continue
        bad = [r for r in rows if r[1] != "200"]
        latencies = [r[2] for r in rows]
        kinds = sorted({r[1] for r in bad})
        print(
            f"  {phase:<22} {len(rows):5d} requests, non-200 {100 * len(bad) / len(rows):5.1f}% "
            f"{kinds if kinds else ''}  p50 {1e3 * _percentile(latencies, 0.5):7.1f} ms  "
            f"p99 {1e3 * _percentile(latencies, 0.99):7.1f} ms  "
            f"max {1e3 * max(latencies):7.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--phase", type=float, default=10.0, help="seconds each kind is held")
    parser.add_argument("--sources", type=int, default=1, help="hostile client addresses")
    args = parser.parse_args()
    sources = (
        [HOSTILE] if args.sources == 1 else [f"127.0.1.{i}" for i in range(1, args.sources + 1)]
    )
    bootstrap, redis_url = services()
    name = f"bench-conn-{uuid.uuid4().hex[:8]}"
    spec = {"name": name, "topics": [name], "task": "binary", "pipeline": PIPELINE}
    config = {"redis": {"key_prefix": name}, "log": {"level": "ERROR"}, "models": [spec]}
    workdir = Path(tempfile.mkdtemp(prefix="livelearn-bench-conn-"))
    config_path = workdir / "livelearn.yaml"
    config_path.write_text(yaml.safe_dump(config))
    key = uuid.uuid4().hex * 2
    seed(redis_url, name, key.encode(), spec)
    port = _free_port()
    env = {
        **os.environ,
        "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LIVELEARN_REDIS__URL": redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": key,
        "LIVELEARN_SECURITY__HASH_KEY": uuid.uuid4().hex * 2,
        "LIVELEARN_SERVING__PORT": str(port),
        "LIVELEARN_SERVING__TOKENS": json.dumps([TOKEN]),
    }
    cli = [sys.executable, "-m", "livelearn.cli.main", "--config", str(config_path), "serve"]
    server = subprocess.Popen(cli, env=env, stderr=subprocess.DEVNULL)
    held: list[socket.socket] = []
    try:
        _wait(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            ),
            60,
            "the API",
        )
        body = orjson.dumps({"features": {"empty_server_form_handler": 0.5, "https": 1.0}})
        start, total = 1.0, 2 * args.phase + 2.0
        opts = {
            "port": port,
            "path": f"/v1/models/{name}/predict",
            "body": body.decode(),
            "rate": args.rate,
            "seconds": total,
        }
        code = f"import bench.bench_api_connections as b; b.TOKEN = {TOKEN!r}; b.ordinary_main()"
        ordinary = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(opts)], stdout=subprocess.PIPE, text=True
        )
        assert ordinary.stdout is not None
        assert ordinary.stdout.readline() == "ready\n"
        began = time.monotonic()
        time.sleep(start)
        held, refused_idle = hold(port, args.held, b"", sources)
        time.sleep(max(0.0, began + start + args.phase - time.monotonic()))
        for sock in held:
            sock.close()
        held, refused_half = hold(port, args.held, HALF_HEAD, sources)
        out, _ = ordinary.communicate(timeout=total + 60)
        results = json.loads(out)
        print(
            f"prediction API, one uvicorn worker, default serving settings; ordinary client "
            f"{args.rate:.0f} req/s from {ORDINARY} over {POOL} keep-alive connections; "
            f"{args.held} connections from {sources[0]} ({len(sources)} address(es); idle, "
            "then half-sent heads), of which the "
            f"server refused at once {refused_idle} and {refused_half}"
        )
        phases(
            results,
            {
                "before": (0, start),
                f"{args.held} idle": (start, start + args.phase),
                f"{args.held} half-sent": (start + args.phase, start + 2 * args.phase),
                "after": (start + 2 * args.phase, total),
                "all": (0, total),
            },
        )
    finally:
        for sock in held:
            sock.close()
        stop(server)


if __name__ == "__main__":
    main()
