"""The HTTP server under the API: uvicorn, with deadlines on what a client sends.

uvicorn waits for ever for a request's headers: a connection that sends nothing, or its
headers a byte at a time, stays open, and so does one that keeps sending a body the app
answered without reading (a body sent with a GET, say). Its protocol here gives a
connection ``serving.header_timeout_seconds`` from its opening, or from its previous
answer, to send a request's headers, and caps the size of headers still incomplete; past
either it answers 408 or 431 and closes.
The app bounds the body (``serving.max_body_bytes``, ``serving.body_timeout_seconds``).

A connection is admitted as it opens, before any of its request is read
(``serving._connections``): a client holds at most ``serving.max_connections_per_client``
(past it, a new one is answered 503 and closed at once), and a connection opened while
``serving.max_connections`` are open takes the place of an idle one, or of one still
sending its head, of the client holding the most (closed; 503 when it had begun); when
every connection has a request in progress, it is answered 503 and closed.
Every connection so closed is counted in ``livelearn_api_rejected_total``, as are
uvicorn's own refusals (400 for what is not HTTP, 503 past ``serving.max_connections``
requests in progress).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from livelearn.serving._connections import Activity, ConnectionTable, client_key
from livelearn.serving.metrics import RejectReason, ServingMetrics
from livelearn.settings import ServingSettings

__all__ = ["guarded_protocol", "serve"]

# Request line and headers together; real clients send a few kilobytes (cookies and
# tokens included), and httptools itself sets no bound.
_MAX_HEAD_BYTES = 64 * 1024
# What a refused connection is told: its client's own connections close within the
# header or keep-alive timeouts, so a retry a second later may be admitted.
_RETRY_AFTER_SECONDS = 1


def serve(app: Any, settings: ServingSettings, metrics: ServingMetrics) -> None:
    """Serve ``app`` on ``settings.host:settings.port`` until SIGTERM or SIGINT."""
    # One worker: the lookup holds the models in this process's memory. Requests are not
    # logged one by one (uvicorn's access log), and uvicorn logs through our handler.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,
        http=guarded_protocol(settings, metrics),
        timeout_keep_alive=settings.keep_alive_seconds,
        # uvicorn answers 503 when its count of connections, or of requests in progress,
        # reaches this; the protocol keeps the connections at max_connections, so only
        # requests still running for clients gone (which outlive their connections) can.
        limit_concurrency=settings.max_connections + 1,
        # A client is the address of its connection: uvicorn would otherwise take
        # X-Forwarded-For from any process on this host (it trusts 127.0.0.1 by default).
        proxy_headers=False,
    )


def guarded_protocol(settings: ServingSettings, metrics: ServingMetrics) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline and a size cap on request heads, and
    connections admitted per client (one table for every connection of the server)."""
    per_client = min(settings.max_connections_per_client, settings.max_connections)

    class Protocol(_GuardedHttpTools):
        _header_timeout = settings.header_timeout_seconds
        _metrics = metrics
        _table = ConnectionTable["_GuardedHttpTools"](settings.max_connections, per_client)

    return Protocol


class _GuardedHttpTools(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose connections must send each request's head in time.

    The head timer runs from the connection's opening, and from each answer that leaves no
    request waiting, until a request's headers are complete. When it fires, a connection
    that sent nothing is closed (idle_timeout, unless it was a keep-alive connection that
    had its answers); one that had begun its headers is answered 408 and closed
    (header_timeout); one still sending a body that was answered early is closed
    (body_timeout). Each connection is admitted into the server's ``ConnectionTable`` as it
    opens, and closed at once when refused, or when a new one takes its place.
    """

    _header_timeout: float
    _metrics: ServingMetrics
    _table: ConnectionTable[_GuardedHttpTools]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._answered = False  # whether a request on this connection was answered
        # Since the timer started: whether anything arrived, whether a new request began,
        # and how many bytes arrived once it had.
        self._received = False
        self._head_begun = False
        self._head_bytes = 0

    @property
    def activity(self) -> Activity:
        """Idle, sending a request's head, or with a request in progress."""
        if self._head_timer is None:
            return "busy"  # (or not admitted, or closed: then the table no longer holds it)
        return "head" if self._received or self._head_begun else "idle"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        client = client_key(self.client[0] if self.client else None)
        admission = self._table.admit(self, client)
        if admission.refused == "too_many_connections":
            limit = self._table.per_client
            self._refuse(
                503,
                "too_many_connections",
                f"this client already holds {limit} connections "
                "(serving.max_connections_per_client): reuse them, or retry",
            )
            return
        if admission.refused == "over_capacity":
            self._refuse(
                503,
                "over_capacity",
                f"every one of the {self._table.limit} connections the server holds has a "
                "request in progress (serving.max_connections): retry",
            )
            return
        if admission.evict is not None:
            admission.evict._make_room()
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._table.remove(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is None or self.transport.is_closing():
            return  # not waiting for a head (or it is complete), or already refused
        self._received = True
        if self._head_begun:
            # The chunk a head begins in may end a body being discarded: counted whole.
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._refuse(
                    431,
                    "headers_too_large",
                    f"the request line and headers are larger than {_MAX_HEAD_BYTES} bytes",
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is not None:
            self._head_begun = True

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        limit = self.limit_concurrency
        if limit is not None and (
            len(self.connections) >= limit or len(self.tasks) >= limit
        ):  # uvicorn's own test: it answers 503 below
            self._metrics.rejected.labels("over_capacity").inc()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._answered = True
        waiting = not self.pipeline
        super().on_response_complete()
        if waiting and not self.transport.is_closing():
            self._start_head_timer()

    def send_400_response(self, msg: str) -> None:
        self._metrics.rejected.labels("bad_http").inc()
        super().send_400_response(msg)

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._received = self._head_begun = False
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self._header_timeout, self._head_expired)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            self._refuse(
                408,
                "header_timeout",
                f"the request's headers did not arrive within {self._header_timeout:g} s "
                "(serving.header_timeout_seconds)",
            )
            return
        if self._received:  # the rest of a body answered before its end
            self._metrics.rejected.labels("body_timeout").inc()
        elif not self._answered:  # an idle keep-alive connection is no refusal
            self._metrics.rejected.labels("idle_timeout").inc()
        self._close()

    def _make_room(self) -> None:
        """Close this connection for a new one (the table already let it go): silently when
        idle, with a 503 when it had begun a request's head."""
        if self._head_begun and self._head_timer is not None:
            self._refuse(
                503,
                "evicted",
                f"the server holds its {self._table.limit} connections (serving.max_connections) "
                "and this one had not sent its request's headers: retry",
            )
            return
        self._stop_head_timer()
        self._metrics.rejected.labels("evicted").inc()
        self._close()

    def _refuse(self, status: int, reason: RejectReason, detail: str) -> None:
        """Answer ``status`` with ``detail`` outside any request cycle, and close."""
        self._stop_head_timer()
        self._metrics.rejected.labels(reason).inc()
        body = json.dumps({"detail": detail}).encode()
        retry = f"retry-after: {_RETRY_AFTER_SECONDS}\r\n" if status == 503 else ""
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"{retry}connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._close()

    def _close(self) -> None:
        """Close the connection, and stop counting it at once (uvicorn counts it until its
        connection is lost, which may be a loop turn or more later)."""
        self._table.remove(self)
        self.connections.discard(self)
        self.transport.close()
