"""One client cannot take every connection of the API from the others.

A real ``livelearn serve`` (over real Redis) is held by one client address that opens far
more connections than its cap and keeps them, idle or with a request's head half sent,
while a client with another source address (127.0.0.2, on the loopback network) sends
ordinary predictions: every one of those must be answered 200 within a bound. Then
several addresses together fill the server, and a new client still gets in: the client
holding the most gives up a connection. Connections held past the header deadline are
closed, and every refusal is counted by its reason.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.integration.conftest import Deployment, ServerHandle
from tests.integration.test_api import serve_seeded

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 5.0  # long enough to hold the connections while the ordinary client runs
MAX_CONNECTIONS = 200
PER_CLIENT = 32
SERVING = {
    "header_timeout_seconds": HEADER_TIMEOUT,
    "keep_alive_seconds": 2,
    "max_connections": MAX_CONNECTIONS,
    "max_connections_per_client": PER_CLIENT,
}
HELD = 1000  # connections the hostile client opens
NORMAL = "127.0.0.2"
# How much later than its deadline a held connection may be closed (a loaded machine).
CLOSE_SLACK = 2.0
# The slowest ordinary request allowed (a small, shared test machine; they take ms).
LATENCY_BOUND = 2.0
FEATURES = {"empty_server_form_handler": 0.5, "popup_window": 0.0, "https": 1.0}


@pytest.fixture
def server(deploy: Callable[..., Deployment], unique_name: str) -> Iterator[ServerHandle]:
    yield from serve_seeded(deploy, unique_name, 50, SERVING)


class Ordinary:
    """Predictions from 127.0.0.2 in a thread, one after another, alternately on a
    keep-alive connection and on a new connection each (which must be admitted)."""

    def __init__(self, server: ServerHandle) -> None:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=10) as http:
            name = http.get("/v1/models").json()["models"][0]["model"]
        self.server = server
        self.path = f"/v1/models/{name}/predict"
        self.results: list[tuple[int | str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=NORMAL)
        return httpx.Client(
            base_url=self.server.url, headers=self.server.auth, timeout=10, transport=transport
        )

    def _send(self, http: httpx.Client) -> None:
        started = time.perf_counter()
        try:
            status: int | str = http.post(self.path, json={"features": FEATURES}).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.results.append((status, time.perf_counter() - started))

    def _run(self) -> None:
        with self._client() as kept:
            while not self._stop.is_set():
                self._send(kept)
                with self._client() as fresh:
                    self._send(fresh)
                time.sleep(0.005)

    def __enter__(self) -> Ordinary:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait(self, count: int, timeout: float = 20) -> None:
        """Return once ``count`` more requests were answered."""
        target = len(self.results) + count
        deadline = time.monotonic() + timeout
        while len(self.results) < target and time.monotonic() < deadline:
            time.sleep(0.01)


def hold(server: ServerHandle, source: str, n: int, send: bytes) -> list[socket.socket]:
    """Open ``n`` connections from ``source``, send ``send`` on each, and keep them."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", server.port), source_address=(source, 0))
        with contextlib.suppress(OSError):  # refused and closed already
            sock.sendall(send)
        socks.append(sock)
    return socks


def answers(socks: list[socket.socket], deadline: float) -> list[bytes | None]:
    """What the server sent on each connection until it closed it; None for a connection
    still open at ``deadline`` (time.monotonic)."""
    got: dict[socket.socket, bytes] = {s: b"" for s in socks}
    closed: set[socket.socket] = set()
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:  # refused before its request was read
                    chunk = b""
                got[sock] += chunk
                if not chunk:
                    closed.add(sock)
                    sel.unregister(sock)
    for sock in socks:
        sock.close()
    return [got[s] if s in closed else None for s in socks]


def status_of(answer: bytes | None) -> str:
    """``"503"``, ``"408"``… from an answer; ``"closed"`` for none, ``"open"`` if still open."""
    if answer is None:
        return "open"
    return answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"


def rejected(server: ServerHandle) -> dict[str, float]:
    """``livelearn_api_rejected_total`` by reason."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    prefix = 'livelearn_api_rejected_total{reason="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def check_ordinary(results: list[tuple[int | str, float]]) -> None:
    statuses = sorted({str(s) for s, _ in results})
    slowest = max(t for _, t in results)
    assert statuses == ["200"], (statuses, len(results))
    assert slowest < LATENCY_BOUND, slowest


HALF_HEAD = b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: appl"


@pytest.mark.parametrize(
    ("send", "held_answer"), [(b"", "closed"), (HALF_HEAD, "408")], ids=["idle", "half-sent"]
)
def test_one_client_holding_a_thousand_connections_leaves_the_others_served(
    server: ServerHandle, send: bytes, held_answer: str
) -> None:
    with Ordinary(server) as ordinary:
        ordinary.wait(20)
        before = len(ordinary.results)
        opened = time.monotonic()
        socks = hold(server, "127.0.0.1", HELD, send)
        held_for = time.monotonic() - opened
        ordinary.wait(100)
        during = ordinary.results[before:]
        assert time.monotonic() - opened < HEADER_TIMEOUT, "the attack was not held throughout"
    # The connections over the cap were refused at once; the others are closed at the
    # header deadline.
    got = answers(socks, time.monotonic() + HEADER_TIMEOUT + CLOSE_SLACK)
    counts = {s: [status_of(a) for a in got].count(s) for s in {status_of(a) for a in got}}
    print({"held for s": round(held_for, 2), "answers": counts, "ordinary": len(during)})

    check_ordinary(during)
    assert counts.get(held_answer, 0) == PER_CLIENT, counts
    assert set(counts) <= {"503", "closed", held_answer}, counts  # none left open
    refused = [a for a in got if a and a.startswith(b"HTTP/1.1 503 ")]
    assert refused, counts
    assert b"retry-after: 1\r\n" in refused[0] and b"max_connections_per_client" in refused[0]
    counted = rejected(server)
    assert counted["too_many_connections"] == HELD - PER_CLIENT, counted
    timeout_reason = "idle_timeout" if held_answer == "closed" else "header_timeout"
    assert counted[timeout_reason] >= PER_CLIENT, counted
    assert counted["evicted"] == 0, counted


def test_a_full_server_makes_room_from_the_client_holding_the_most(server: ServerHandle) -> None:
    sources = [f"127.0.0.{i}" for i in range(3, 3 + MAX_CONNECTIONS // PER_CLIENT + 2)]
    with Ordinary(server) as ordinary:
        ordinary.wait(20)
        before = len(ordinary.results)
        opened = time.monotonic()
        socks = [s for src in sources for s in hold(server, src, PER_CLIENT, HALF_HEAD)]
        ordinary.wait(100)
        during = ordinary.results[before:]
        assert time.monotonic() - opened < HEADER_TIMEOUT, "the attack was not held throughout"
    got = answers(socks, time.monotonic() + HEADER_TIMEOUT + CLOSE_SLACK)
    counts = {s: [status_of(a) for a in got].count(s) for s in {status_of(a) for a in got}}
    print({"answers": counts, "ordinary": len(during)})

    check_ordinary(during)
    assert "open" not in counts, counts
    counted = rejected(server)
    # Beyond the server's connections, every new one made room by closing another (with a
    # 503 when the server had read its head); those kept get 408 at the header deadline.
    assert counted["evicted"] >= len(socks) - MAX_CONNECTIONS, counted
    assert counts.get("503", 0) + counts.get("closed", 0) >= len(socks) - MAX_CONNECTIONS, counts
    assert 0 < counts.get("408", 0) <= MAX_CONNECTIONS, counts
    assert counted["too_many_connections"] == 0 and counted["over_capacity"] == 0, counted
