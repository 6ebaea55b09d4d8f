"""The worker's HTTP endpoints: /metrics, /healthz (the loop is alive), /readyz."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# A check returns (ok, details); details are shown as JSON.
Check = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    """Serves metrics and health checks on a thread of its own."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, healthz: Check, readyz: Check
    ) -> None:
        routes: dict[str, Check] = {"/healthz": healthz, "/readyz": readyz}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in routes:
                    try:
                        ok, details = routes[path]()
                    except Exception as exc:
                        ok, details = False, {"error": type(exc).__name__}
                    body = json.dumps({"ok": ok, **details}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Requests are not logged: scrapes would drown the worker's log."""

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="livelearn-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port bound (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
