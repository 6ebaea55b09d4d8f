"""An HTTP server answering ``GET /api/v1/alerts`` as Prometheus does, for the status
page's tests; the compose test reads a real Prometheus."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any


def alerts_answer(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A ``/api/v1/alerts`` answer listing ``alerts`` (each with labels and state)."""
    return {"status": "success", "data": {"alerts": list(alerts)}}


@contextlib.contextmanager
def fake_prometheus(answers: list[dict[str, Any]]) -> Iterator[str]:
    """Serve the last item of ``answers`` (append to change it); yields the base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(answers[-1]).encode()
            self.send_response(200 if self.path == "/api/v1/alerts" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
