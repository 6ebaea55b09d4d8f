"""The prediction API under load, and how fresh its predictions are, in one run.

A real ``livelearn worker`` learns the Phishing data set from a one-partition topic
(StandardScaler + LogisticRegression, the default checkpoint cadence), and
``livelearn serve`` (one uvicorn worker) serves it; both are subprocesses.

(a) Load: a separate process sends single-event predictions at a fixed 500 requests a
    second for 10 s over keep-alive connections (open loop: latency counts from the time a
    request was due, so a slow answer cannot hide the ones queued behind it); then as fast
    as 8 connections allow, for the API's ceiling.
(b) Freshness: while events stream in at 100 a second, a marker event is produced every
    second or so (at a random phase against the checkpoint timer); it is visible when an
    API prediction names a shard offset past it.

Targets: API p99 <= 10 ms at 500 req/s; freshness p95 <= 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml
from kafka import KafkaProducer
from river import datasets

from bench.bench_worker import services
from livelearn.settings import TopicSettings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.stream.app import ensure_topics

TOKEN = "bench-" + uuid.uuid4().hex
PIPELINE = [
    {"class": "preprocessing.StandardScaler"},
    {"class": "linear_model.LogisticRegression"},
]


def _percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank.

    >>> _percentile([1.0, 2.0, 3.0, 4.0], 0.5), _percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


# -- load generator (runs in its own process) ---------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one HTTP/1.1 request on a keep-alive connection; read the answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _load(
    port: int, path: str, body: bytes, rate: float | None, seconds: float, connections: int
) -> dict[str, Any]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    late: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds

    async def one(due: float) -> None:
        nonlocal errors
        late.append(loop.time() - due)  # the generator's own delay, before it asks a connection
        conn = await pool.get()
        try:
            status = await _exchange(*conn, request)
        finally:
            pool.put_nowait(conn)
        if status != 200:
            errors += 1
        latencies.append(loop.time() - due)

    if rate is not None:  # open loop: request i is due at started + i / rate
        tasks = []
        i = 0
        while (due := started + i / rate) < deadline:
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(due)))
            i += 1
        await asyncio.gather(*tasks)
    else:  # closed loop: each connection sends its next request when the last is answered

        async def client() -> None:
            while loop.time() < deadline:
                await one(loop.time())

        await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = loop.time() - started
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rate": len(latencies) / elapsed,
        "p50_ms": 1e3 * _percentile(latencies, 0.50),
        "p99_ms": 1e3 * _percentile(latencies, 0.99),
        "max_ms": 1e3 * max(latencies),
        "late_p99_ms": 1e3 * _percentile(late, 0.99),
    }


def load_client_main() -> None:
    """Entry point of the load generator process: arguments in argv[1] as JSON."""
    opts = json.loads(sys.argv[1])
    result = asyncio.run(_load(**{**opts, "body": opts["body"].encode()}))
    print(json.dumps(result))


def run_load(
    port: int,
    path: str,
    body: bytes,
    rate: float | None,
    seconds: float,
    connections: int,
    prefix: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the load generator in a separate process (its command after ``prefix``, e.g.
    ``taskset -c 1``) and return its figures."""
    opts = {
        "port": port,
        "path": path,
        "body": body.decode(),
        "rate": rate,
        "seconds": seconds,
        "connections": connections,
    }
    code = f"import bench.bench_api as b, sys; b.TOKEN = {TOKEN!r}; b.load_client_main()"
    return run_python(prefix, code, opts)


def run_python(prefix: tuple[str, ...], code: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Run ``code`` in a new Python process (its command after ``prefix``), with ``opts``
    as JSON in argv[1]; what it prints, read as JSON."""
    out = subprocess.run(
        [*prefix, sys.executable, "-c", code, json.dumps(opts)],
        capture_output=True,
        check=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- the system under test ------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _phishing() -> list[tuple[dict[str, Any], Any]]:
    return list(datasets.Phishing())


def _events(start: int, n: int) -> list[dict[str, Any]]:
    rows = _phishing()
    return [
        {
            "id": f"e{i}",
            "ts": i,
            "key": None,
            "features": rows[i % len(rows)][0],
            "label": rows[i % len(rows)][1],
        }
        for i in range(start, start + n)
    ]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _predict(port: int, model: str, features: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/{model}/predict",
        data=orjson.dumps({"features": features}),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def stream(
    producer: KafkaProducer, topic: str, rate: float, start: int, stop: threading.Event
) -> threading.Thread:
    """A thread producing Phishing events from index ``start`` at ``rate`` a second, so the
    model changes all the time, until ``stop`` is set."""

    def run() -> None:
        began = time.monotonic()
        i = 0
        while not stop.wait(max(0.0, began + i / rate - time.monotonic())):
            producer.send(topic, orjson.dumps(_events(start + i, 1)[0]), partition=0)
            i += 1
            if i % 20 == 0:
                producer.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def freshness(
    port: int, model: str, topic: str, producer: KafkaProducer, samples: int
) -> list[float]:
    """(b) Seconds from producing a marker event to an API prediction that covers it, while
    the events already streaming (``stream``) keep the model changing."""
    shard = f"{topic}/0"
    probe = _events(0, 1)[0]["features"]
    delays = []
    for i in range(samples):
        time.sleep(random.uniform(0.2, 1.2))  # a random phase against the 1 s checkpoint timer
        marker = {
            "id": f"marker{i}",
            "ts": i,
            "key": None,
            "features": probe,
            "label": i % 2 == 0,
        }
        produced = time.time()
        offset = producer.send(topic, orjson.dumps(marker), partition=0).get(timeout=10).offset
        while _predict(port, model, probe)["shards"].get(shard, -1) <= offset:
            time.sleep(0.005)
        delays.append(time.time() - produced)
    return delays


def one_model(bootstrap: str, prefix: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings of one new binary model named ``prefix-<random>``, learned from a new
    one-partition topic of the same name, at the default checkpoint cadence."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {name: 1}, TopicSettings())
    spec = {
        "name": name,
        "topics": [name],
        "task": "binary",
        "pipeline": pipeline,
        "metrics": ["Accuracy"],
    }
    return {
        "kafka": {"group_id": name},
        "redis": {"key_prefix": name},
        "log": {"level": "WARNING", "format": "json"},
        "models": [spec],
    }


def secret_keys() -> dict[str, str]:
    """The snapshot and hash keys: from the environment, else new ones."""
    return {
        name: os.environ.get(f"LIVELEARN_SECURITY__{name.upper()}", uuid.uuid4().hex * 2)
        for name in ("snapshot_key", "hash_key")
    }


def cli_env(bootstrap: str, redis_url: str, port: int, keys: dict[str, str]) -> dict[str, str]:
    """The environment of the ``livelearn`` processes: the services, the keys, the API on
    ``port`` with the bench's token, and the worker's own HTTP port free."""
    return {
        **os.environ,
        "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LIVELEARN_REDIS__URL": redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": keys["snapshot_key"],
        "LIVELEARN_SECURITY__HASH_KEY": keys["hash_key"],
        "LIVELEARN_HTTP__PORT": str(_free_port()),
        "LIVELEARN_SERVING__PORT": str(port),
        "LIVELEARN_SERVING__TOKENS": json.dumps([TOKEN]),
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL past 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=25)
    args = parser.parse_args()
    bootstrap, redis_url = services()
    config = one_model(bootstrap, "bench-api", PIPELINE)
    spec = config["models"][0]
    name = topic = spec["name"]
    workdir = Path(tempfile.mkdtemp(prefix="livelearn-bench-api-"))
    config_path = workdir / "livelearn.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = _free_port()
    env = cli_env(bootstrap, redis_url, port, secret_keys())
    cli = [sys.executable, "-m", "livelearn.cli.main", "--config", str(config_path)]
    procs: list[subprocess.Popen[bytes]] = []
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    store = RedisCheckpointStore(redis.Redis.from_url(redis_url), name)
    try:
        procs.append(subprocess.Popen([*cli, "worker"], env=env, stderr=subprocess.DEVNULL))
        first = _events(0, 2000)
        for e in first:
            producer.send(topic, orjson.dumps(e), partition=0)
        producer.flush()
        shard = ShardId(name, topic, 0)
        _wait(
            lambda: (store.describe(shard) or {}).get("next_offset") == len(first),
            120,
            "the worker's first checkpoint",
        )
        procs.append(subprocess.Popen([*cli, "serve"], env=env, stderr=subprocess.DEVNULL))
        _wait(lambda: _get_json(f"http://127.0.0.1:{port}/readyz")["ok"], 60, "the API")

        path = f"/v1/models/{name}/predict"
        body = orjson.dumps({"features": first[0]["features"]})
        print(
            f"prediction API, one uvicorn worker, {spec['pipeline'][-1]['class']} "
            f"learned from {len(first)} Phishing events\n"
        )
        run_load(port, path, body, None, 2.0, 4)  # warm-up
        fixed = run_load(port, path, body, args.rate, args.seconds, 32)
        ceiling = run_load(port, path, body, None, 5.0, 8)
        print(
            f"(a) fixed rate {args.rate:.0f} req/s for {args.seconds:.0f} s: achieved "
            f"{fixed['rate']:.0f} req/s, p50 {fixed['p50_ms']:.2f} ms, p99 {fixed['p99_ms']:.2f} ms"
            f", {fixed['errors']} errors   (target: p99 <= 10 ms)"
        )
        print(
            f"    as fast as 8 connections go, 5 s: {ceiling['rate']:.0f} req/s, p50 "
            f"{ceiling['p50_ms']:.2f} ms, p99 {ceiling['p99_ms']:.2f} ms, "
            f"{ceiling['errors']} errors"
        )
        streaming = threading.Event()
        stream(producer, topic, 100.0, 10_000, streaming)
        try:
            delays = freshness(port, name, topic, producer, args.samples)
        finally:
            streaming.set()
        print(
            f"(b) freshness, produced -> visible in an API prediction, checkpoints every 1 s: "
            f"p50 {statistics.median(delays):.2f} s, p95 {_percentile(delays, 0.95):.2f} s, "
            f"max {max(delays):.2f} s over {len(delays)} samples   (target: p95 <= 2 s)"
        )
    finally:
        producer.close(timeout=10)
        for proc in reversed(procs):
            stop(proc)
