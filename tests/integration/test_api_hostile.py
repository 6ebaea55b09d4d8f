"""The prediction API under hostile requests, sent while normal traffic runs.

A real ``livelearn serve`` (over real Redis) gets oversized bodies, oversized events and
batches, malformed JSON and connections that send nothing, or their headers or body a
byte at a time, while another process sends ordinary predictions and times them. The
ordinary requests must stay fast, no answer may be a 500, the server must not keep the
memory the attack made it use, slow connections must be closed within their deadlines,
and every refusal must be counted by its reason.
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Deployment, ServerHandle, wait_for
from tests.integration.test_api import seed_model, serve_seeded

pytestmark = pytest.mark.integration

# Short deadlines, so that the test sees them expire; the defaults are longer.
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
SERVING = {
    "header_timeout_seconds": HEADER_TIMEOUT,
    "body_timeout_seconds": BODY_TIMEOUT,
    "keep_alive_seconds": 2,
}
# How much later than its deadline a slow connection may be closed (a loaded, noisy machine).
CLOSE_SLACK = 1.5
SLOW_CONNECTIONS = 12  # of each kind
# Each hostile request is sent 3 times, one at a time: several at once would load the
# cores of a small, shared test machine, which shows in every process's latency.
ATTACKS = 3
ATTACKERS = 1


@pytest.fixture
def server(deploy: Callable[..., Deployment], unique_name: str) -> Iterator[ServerHandle]:
    yield from serve_seeded(deploy, unique_name, 200, SERVING)


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# Ordinary single-event predictions, due every 10 ms on one keep-alive connection, sent from
# a process of their own (the attack's threads must not delay them in this one) until its
# standard input closes; it prints their latencies and statuses. A latency counts from
# when the request was due, so that a stalled server cannot hide the requests queued
# behind a slow one (open loop, as bench/bench_api.py).
TRAFFIC = """
import json, sys, threading, time
import httpx

url, token, path, features = json.loads(sys.argv[1])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
latencies, statuses = [], []
with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=30) as http:
    due = time.perf_counter()
    while not done.wait(max(0.0, due - time.perf_counter())):
        r = http.post(path, json={"features": features})
        latencies.append(time.perf_counter() - due)
        statuses.append(r.status_code)
        due += 0.01
        if len(latencies) == 100:
            print("warm", flush=True)
print(json.dumps({"latencies": latencies, "statuses": statuses}), flush=True)
"""


class Traffic:
    """The ordinary traffic's process."""

    def __init__(self, server: ServerHandle, path: str, features: dict[str, Any]) -> None:
        arg = json.dumps([server.url, server.auth["Authorization"], path, features])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAFFIC, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout

    def warm(self) -> None:
        """Return once 100 requests were answered."""
        assert self.stdout.readline() == "warm\n"

    def stop(self) -> tuple[list[float], list[int]]:
        """Stop; the latencies and statuses of every request."""
        out, _ = self.proc.communicate(timeout=60)
        result = json.loads(out)
        return result["latencies"], result["statuses"]


def post_raw(server: ServerHandle, path: str, content: Any) -> httpx.Response:
    """POST ``content`` (bytes, or an iterator of bytes: sent chunked) as JSON."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        return http.post(
            path, content=content, headers={**server.auth, "Content-Type": "application/json"}
        )


def slow_connection(server: ServerHandle, kind: str, path: str) -> tuple[float, bytes]:
    """Open a connection that sends nothing (``idle``), its headers a byte at a time
    (``headers``) or its body a byte at a time (``body``); return how long the server kept
    it open and what it answered."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {server.auth['Authorization']}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    drip = {"idle": b"", "headers": head, "body": b'{"features": {"x": 1}}' + b" " * 78}[kind]
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(0.2)
    started = time.monotonic()
    received = b""
    try:
        if kind == "body":
            sock.sendall(head)
        for i in range(10_000):
            if i < len(drip):
                sock.sendall(drip[i : i + 1])
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                break
            received += chunk or b""
            if time.monotonic() - started > 30:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    return time.monotonic() - started, received


def test_hostile_requests_leave_normal_traffic_fast(server: ServerHandle) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=10) as http:
        name = http.get("/v1/models").json()["models"][0]["model"]
    path = f"/v1/models/{name}/predict"
    features = {"empty_server_form_handler": 0.5, "popup_window": 0.0, "https": 1.0}

    # Made before the traffic starts: encoding them holds this process's GIL for a while.
    event = {"features": features}
    huge_batch = json.dumps({"events": [{"features": features}] * 100_000}).encode()
    huge_event = json.dumps({"features": {f"f{i}": 1.0 for i in range(617_000)}}).encode()
    many_features = json.dumps({"features": {f"f{i}": 1 for i in range(20_000)}}).encode()
    long_batch = json.dumps({"events": [event] * 1001}).encode()

    def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    traffic = Traffic(server, path, features)
    traffic.warm()
    rss_before = rss_bytes(server.proc.pid)
    attack_started = time.perf_counter()

    hostile: dict[str, tuple[Callable[[], httpx.Response], int]] = {
        "huge-batch": (lambda: post_raw(server, path, huge_batch), 413),
        "huge-batch-chunked": (lambda: post_raw(server, path, chunks(huge_batch)), 413),
        "huge-event": (lambda: post_raw(server, path, huge_event), 413),
        "many-features": (lambda: post_raw(server, path, many_features), 422),
        "long-batch": (lambda: post_raw(server, path, long_batch), 422),
        "surrogate": (lambda: post_raw(server, path, b'{"features":{"a":1.0},"\\ud800":1}'), 422),
        "deep": (lambda: post_raw(server, path, b"[" * 100_000 + b"]" * 100_000), 422),
        "digits": (lambda: post_raw(server, path, b'{"features":{"a":' + b"9" * 5000 + b"}}"), 422),
    }
    answers: dict[str, list[httpx.Response]] = {}
    slow: dict[str, list[tuple[float, bytes]]] = {}
    with ThreadPoolExecutor(max_workers=3 * SLOW_CONNECTIONS + ATTACKERS) as pool:
        slow_futures = {
            kind: [
                pool.submit(slow_connection, server, kind, path) for _ in range(SLOW_CONNECTIONS)
            ]
            for kind in ("idle", "headers", "body")
        }
        sent = [
            (case, pool.submit(send)) for _ in range(ATTACKS) for case, (send, _) in hostile.items()
        ]
        for case, future in sent:
            answers.setdefault(case, []).append(future.result())
        slow = {kind: [f.result() for f in futures] for kind, futures in slow_futures.items()}
    attack_seconds = time.perf_counter() - attack_started
    latencies, statuses = traffic.stop()
    # The attack's share: the requests due after the warm-up's hundred.
    baseline, during = latencies[:100], latencies[100:]
    rss_after = rss_bytes(server.proc.pid)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        counted = http.get("/metrics").text

    figures = {
        "baseline p50/p95 ms": [round(1000 * statistics.median(baseline), 1)],
        "attack p50/p95/max ms": [
            round(1000 * statistics.quantiles(during, n=100, method="inclusive")[q], 1)
            for q in (49, 94)
        ]
        + [round(1000 * max(during), 1)],
        "requests during attack": len(during),
        "attack seconds": round(attack_seconds, 2),
        "rss growth MB": round((rss_after - rss_before) / 2**20, 1),
        "answers": {case: [r.status_code for r in rs] for case, rs in answers.items()},
        "slow close s (max)": {k: round(max(t for t, _ in v), 2) for k, v in slow.items()},
        "slow answers": {
            k: sorted({a[:12].decode(errors="replace") for _, a in v}) for k, v in slow.items()
        },
    }
    print(json.dumps(figures, indent=1))

    for case, (_, status) in hostile.items():
        got = [r.status_code for r in answers[case]]
        assert got == [status] * len(got), (case, got, answers[case][0].text[:300])
    assert "serving.max_features" in answers["many-features"][0].text
    assert "serving.max_batch" in answers["long-batch"][0].text
    assert "too many digits" in answers["digits"][0].text
    assert "too deeply" in answers["deep"][0].text

    assert set(statuses) == {200}, sorted(set(statuses))
    p50 = statistics.median(during)
    p95 = statistics.quantiles(during, n=100, method="inclusive")[94]
    assert p50 < 0.25 and p95 < 1.0, figures
    assert rss_after - rss_before < 64 * 2**20, figures

    deadline = {"idle": HEADER_TIMEOUT, "headers": HEADER_TIMEOUT, "body": BODY_TIMEOUT}
    for kind, results in slow.items():
        for held, answer in results:
            assert held < deadline[kind] + CLOSE_SLACK, (kind, held, answer)
    assert all(a == b"" for _, a in slow["idle"]), slow["idle"]
    assert all(a.startswith(b"HTTP/1.1 408 ") for _, a in slow["headers"] + slow["body"]), slow

    assert 'status="500"' not in counted
    for reason, least in [
        ("body_too_large", 9),
        ("too_many_features", 3),
        ("too_many_events", 3),
        ("bad_encoding", 3),
        ("too_deep", 3),
        ("too_many_digits", 3),
        ("idle_timeout", SLOW_CONNECTIONS),
        ("header_timeout", SLOW_CONNECTIONS),
        ("body_timeout", SLOW_CONNECTIONS),
    ]:
        sample = f'livelearn_api_rejected_total{{reason="{reason}"}}'
        lines = [line for line in counted.splitlines() if line.startswith(sample)]
        assert lines and float(lines[0].split()[-1]) >= least, (reason, lines)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_connection_level_refusals_are_answered_and_counted(
    deploy: Callable[..., Deployment], unique_name: str
) -> None:
    dep = deploy(f"{unique_name}-topic", settings={"serving": {"max_connections": 3}})
    seed_model(dep, 50)
    server = dep.start_server()
    server.wait_ready()
    address = ("127.0.0.1", server.port)

    with socket.create_connection(address) as sock:  # a head that keeps growing
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        assert read_to_close(sock).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(address) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert read_to_close(sock).startswith(b"HTTP/1.1 400 ")

    other = httpx.Client(
        base_url=server.url, timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    # One client holds every connection (3, its cap too): its next one is refused at once,
    # while another client's takes the place of one of them.
    idle = [socket.create_connection(address) for _ in range(3)]
    try:
        r = httpx.get(f"{server.url}/healthz", timeout=10)
        assert r.status_code == 503, r.text
        assert "max_connections_per_client" in r.text and r.headers["retry-after"] == "1"
        assert other.get("/healthz").status_code == 200
        time.sleep(0.2)
        closed, _, _ = select.select(idle, [], [], 0)
        assert len(closed) == 1 and closed[0].recv(1) == b"", closed  # closed for it
    finally:
        other.close()
        for sock in idle:
            sock.close()

    # Requests in progress (their bodies awaited) are never closed for a new connection.
    head = (
        f"POST /v1/models/{dep.model}/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
        f"Content-Type: application/json\r\nAuthorization: {server.auth['Authorization']}\r\n\r\n"
    ).encode()
    busy = [socket.create_connection(address) for _ in range(3)]
    try:
        for sock in busy:
            sock.sendall(head)
        time.sleep(0.5)  # for the server to read the heads
        with socket.create_connection(address, source_address=("127.0.0.2", 0)) as sock:
            answer = read_to_close(sock)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"max_connections" in answer, answer
    finally:
        for sock in busy:
            sock.close()

    def metrics() -> str | None:
        r = httpx.get(f"{server.url}/metrics", timeout=10)
        return r.text if r.status_code == 200 else None

    counted = wait_for(metrics, 10, "the server to answer")
    for reason in (
        "headers_too_large",
        "bad_http",
        "too_many_connections",
        "evicted",
        "over_capacity",
    ):
        assert f'livelearn_api_rejected_total{{reason="{reason}"}} 1.0' in counted, reason
    assert server.terminate() == 0, server.tail()
