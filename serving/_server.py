"""The HTTP server under the API: uvicorn, with deadlines on what a client sends.

uvicorn waits for ever for a request's headers: a connection that sends nothing, or its
headers a byte at a time, stays open, and so does one that keeps sending a body the app
answered without reading (a body sent with a GET, say). Its protocol here gives a
connection ``serving.header_timeout_seconds`` from its opening, or from its previous
answer, to send a request's headers, and caps the size of headers still incomplete; past
either it answers 408 or 431 and closes.
The app bounds the body (``serving.max_body_bytes``, ``serving.body_timeout_seconds``).
Every connection so closed is counted in ``livelearn_api_rejected_total``, as are
uvicorn's own refusals (400 for what is not HTTP, 503 past ``serving.max_connections``).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from livelearn.serving.metrics import RejectReason, ServingMetrics
from livelearn.settings import ServingSettings

__all__ = ["guarded_protocol", "serve"]

# Request line and headers together; real clients send a few kilobytes (cookies and
# tokens included), and httptools itself sets no bound.
_MAX_HEAD_BYTES = 64 * 1024


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
        http=guarded_protocol(settings.header_timeout_seconds, metrics),
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=settings.max_connections,
    )


def guarded_protocol(header_timeout: float, metrics: ServingMetrics) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline and a size cap on request heads."""

    class Protocol(_GuardedHttpTools):
        _header_timeout = header_timeout
        _metrics = metrics

    return Protocol


class _GuardedHttpTools(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose connections must send each request's head in time.

    The head timer runs from the connection's opening, and from each answer that leaves no
    request waiting, until a request's headers are complete. When it fires, a connection
    that sent nothing is closed (idle_timeout, unless it was a keep-alive connection that
    had its answers); one that had begun its headers is answered 408 and closed
    (header_timeout); one still sending a body that was answered early is closed
    (body_timeout).
    """

    _header_timeout: float
    _metrics: ServingMetrics

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._answered = False  # whether a request on this connection was answered
        # Since the timer started: whether anything arrived, whether a new request began,
        # and how many bytes arrived once it had.
        self._received = False
        self._head_begun = False
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
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
        self.transport.close()

    def _refuse(self, status: int, reason: RejectReason, detail: str) -> None:
        """Answer ``status`` with ``detail`` outside any request cycle, and close."""
        self._stop_head_timer()
        self._metrics.rejected.labels(reason).inc()
        body = json.dumps({"detail": detail}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
