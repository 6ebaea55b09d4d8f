"""The alerts Prometheus says are firing, for the status page (``serving.alerts_url``).

Prometheus evaluates config/alerts.yml; its ``GET /api/v1/alerts`` lists the active
alerts with their labels and state. A background thread reads it every ``every_s``
seconds, so a page request never waits for Prometheus: it gets the last answer, with the
error of the last attempt if that failed. The URL may hold credentials; it is never
logged or shown, only its host.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AlertsView", "FiringAlert", "PrometheusAlerts"]

log = logging.getLogger("livelearn.api")

# The largest answer read: a few thousand alerts.
_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FiringAlert:
    """One firing alert: its name, labels (``model`` names the model it is about, if any)
    and when it became active (as Prometheus reports it)."""

    name: str
    labels: dict[str, str]
    active_at: str | None = None

    @property
    def model(self) -> str | None:
        return self.labels.get("model")


@dataclass(frozen=True)
class AlertsView:
    """The last answer: the firing alerts, the Unix time they were read (None: never), and
    the last attempt's error (None: it worked)."""

    alerts: list[FiringAlert] = field(default_factory=list)
    read_at: float | None = None
    error: str | None = None


def _read(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        body: bytes = answer.read(_MAX_BYTES + 1)
    if len(body) > _MAX_BYTES:
        raise ValueError(f"the answer is over {_MAX_BYTES} bytes")
    return body


def parse_alerts(body: bytes) -> list[FiringAlert]:
    """The firing alerts in a ``/api/v1/alerts`` answer (pending ones are left out).

    >>> parse_alerts(b'{"status": "success", "data": {"alerts": ['
    ...     b'{"labels": {"alertname": "A", "model": "m"}, "state": "firing"},'
    ...     b'{"labels": {"alertname": "B"}, "state": "pending"}]}}')
    [FiringAlert(name='A', labels={'alertname': 'A', 'model': 'm'}, active_at=None)]
    """
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("status") != "success":
        raise ValueError(f"not a Prometheus answer: {str(data)[:200]}")
    alerts = data.get("data", {}).get("alerts", [])
    out = []
    for alert in alerts if isinstance(alerts, list) else []:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if not isinstance(labels, dict) or alert.get("state") != "firing":
            continue
        labels = {str(k): str(v) for k, v in labels.items()}
        out.append(FiringAlert(labels.get("alertname", "?"), labels, alert.get("activeAt")))
    return out


class PrometheusAlerts:
    """Reads ``<url>/api/v1/alerts`` every ``every_s`` seconds on a thread of its own,
    started by the first ``current()``.

    Parameters
    ----------
    url
        Prometheus' base URL (``http://prometheus:9090``).
    every_s, timeout_s
        How often it is read, and how long one attempt may take.
    read
        Fetches a URL's body (tests pass their own).
    """

    def __init__(
        self,
        url: str,
        *,
        every_s: float = 10.0,
        timeout_s: float = 2.0,
        read: Callable[[str, float], bytes] = _read,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url.rstrip("/") + "/api/v1/alerts"
        self.host = urllib.parse.urlsplit(url).hostname or "?"
        self._every_s = every_s
        self._timeout_s = timeout_s
        self._read = read
        self._clock = clock
        self._view = AlertsView()
        self._started = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def current(self) -> AlertsView:
        """The last answer (an empty one, with no ``read_at``, before the first)."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._loop, name="prometheus-alerts", daemon=True).start()
        return self._view

    def refresh(self) -> AlertsView:
        """Read the alerts now; the view is kept, with the error, if that fails."""
        try:
            alerts = parse_alerts(self._read(self._url, self._timeout_s))
        except Exception as exc:  # any failure is shown on the page, never raised
            error = f"Prometheus at {self.host} did not answer: {type(exc).__name__}"
            if self._view.error != error:
                log.warning("%s: %s", error, _without_url(str(exc), self._url))
            self._view = AlertsView(self._view.alerts, self._view.read_at, error)
        else:
            self._view = AlertsView(alerts, self._clock())
        return self._view

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self._every_s)


def _without_url(text: str, url: str) -> str:
    """``text`` with the URL (which may hold a password) cut out."""
    return text.replace(url, "<alerts_url>")
