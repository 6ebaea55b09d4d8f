"""A real Prometheus for the tests and the benchmarks: scrapes workers, evaluates the alerts.

`LocalPrometheus` runs Debian's ``prometheus`` (``apt-get install prometheus``; `PACKAGES`
for `devtools.apt`) as a child process: its own configuration and TSDB in a directory of
the caller's, listening on a free port of 127.0.0.1, scraping the given ``/metrics``
targets as the ``livelearn-worker`` job (the job the rules name) and evaluating
``config/alerts.yml`` every ``interval_s`` seconds. It answers `query`
(``/api/v1/query``) and `alerts` (``/api/v1/alerts``), and `stop` ends it and waits.
`AlertWatch` polls the alerts from a thread and keeps every alert that was ever active.

The rules are loaded as written, ``for:`` durations included, never rewritten: the
alerts on model signals (``LivelearnLabelFreeAlarm``, ``LivelearnDriftDetected``) fire
with ``for: 0m``, so the first evaluation that sees their counter move makes them firing;
an alert with a longer ``for:`` stays pending for that long, and a short test sees it
pending at most. Only the scrape and evaluation intervals are shortened.

Needs nothing beyond the standard library and the error tree (`livelearn.errors`).
"""

from __future__ import annotations

import datetime
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from livelearn.errors import StackError

__all__ = ["ALERTS", "PACKAGES", "AlertWatch", "LocalPrometheus", "active_at"]

# The repository's alert rules (devtools/ sits beside config/ at the top of the checkout).
ALERTS = Path(__file__).resolve().parent.parent / "config" / "alerts.yml"
# The commands, with their Debian package, for `devtools.apt.ensure`.
PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus"}
# How long Prometheus may take to replay an empty TSDB and load the rules on a loaded
# machine before it is taken for broken.
_READY_TIMEOUT_S = 60.0


class _Started:
    """A context manager over ``start`` and ``stop``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LocalPrometheus(_Started):
    """A ``prometheus`` child process that scrapes ``targets`` (``host:port``) and
    evaluates ``rules``; a context manager that stops it on exit.

    Parameters
    ----------
    workdir
        A directory of the caller's for the configuration, the TSDB and the log.
    targets
        The workers' HTTP addresses (``127.0.0.1:9400``), scraped at ``/metrics``.
    interval_s
        The scrape and the rule evaluation interval.
    rules
        The rule file, ``config/alerts.yml`` by default.
    binary
        The ``prometheus`` command.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        interval_s: float = 1.0,
        rules: Path = ALERTS,
        binary: str = "prometheus",
    ) -> None:
        if interval_s <= 0:
            raise StackError(f"interval_s must be positive, got {interval_s}")
        self.workdir = workdir
        self.targets = list(targets)
        self.interval_s = interval_s
        self.rules = rules
        self.binary = binary
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        """The configuration written for the child (JSON is YAML)."""
        every = f"{round(self.interval_s * 1000)}ms"
        return {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(self.rules)],
            "scrape_configs": [
                {
                    "job_name": "livelearn-worker",
                    "scrape_interval": every,
                    "scrape_timeout": every,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }

    def start(self) -> LocalPrometheus:
        """Write the configuration, start the child and wait until it is ready.

        Raises
        ------
        StackError
            No ``prometheus`` command (the message says what to install), or it exited or
            was not ready within its bound (the message has its log's end).
        """
        path = shutil.which(self.binary)
        if path is None:
            raise StackError(
                f"{self.binary} not found on PATH: install Debian's prometheus package "
                "(apt-get install --no-install-recommends prometheus)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))
        self.port = _free_port()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    path,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StackError(f"prometheus did not become ready:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """End the child (SIGTERM, then SIGKILL past 20 s) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        """The end of the child's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise StackError(f"prometheus answered {path} with {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        data = self._get("/api/v1/query", {"query": expr})
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts, pending and firing: each with ``labels``, ``annotations``,
        ``state`` and ``activeAt``."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return alerts

    def targets_up(self) -> int:
        """How many of the scrape targets answered their last scrape."""
        return sum(float(s["value"][1]) == 1 for s in self.query('up{job="livelearn-worker"}'))


class AlertWatch(_Started):
    """Polls a `LocalPrometheus`'s alerts from a thread, every ``every_s`` seconds, and keeps
    each alert ever active (by its labels): when it became active, and whether and when it
    was seen firing. An alert whose labels change (a label-free alarm that names another
    feature) is a new alert to Prometheus: both are kept.

    A context manager: polls from `start` (entry) to `stop` (exit).
    """

    def __init__(self, prometheus: LocalPrometheus, every_s: float = 0.5) -> None:
        self._prometheus = prometheus
        self._every_s = every_s
        self._seen: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="alert-watch", daemon=True)
        self.errors = 0

    def _poll(self) -> None:
        while not self._stop.wait(self._every_s):
            self.poll()

    def poll(self) -> None:
        """Read the alerts once (a failed read is counted in ``errors``, and retried)."""
        try:
            alerts = self._prometheus.alerts()
        except (OSError, StackError, ValueError):
            self.errors += 1
            return
        now = time.time()
        with self._lock:
            for alert in alerts:
                key = tuple(sorted(alert["labels"].items()))
                record = self._seen.setdefault(
                    key,
                    {
                        "labels": dict(alert["labels"]),
                        "active_at": active_at(alert),
                        "fired_at": None,
                    },
                )
                if alert["state"] == "firing" and record["fired_at"] is None:
                    record["fired_at"] = now
                record["summary"] = alert.get("annotations", {}).get("summary")

    def seen(self) -> list[dict[str, Any]]:
        """Every alert seen: ``labels``, ``active_at`` (Unix time, Prometheus's),
        ``fired_at`` (when first seen firing, by this clock; None if never) and ``summary``
        (its newest annotation's)."""
        with self._lock:
            return [dict(record) for record in self._seen.values()]

    def start(self) -> AlertWatch:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, after one last read."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()


def active_at(alert: Mapping[str, Any]) -> float:
    """The Unix time an alert of `LocalPrometheus.alerts` became active (pending, or firing
    at once with ``for: 0m``).

    >>> active_at({"activeAt": "2026-01-02T03:04:05.123456789Z"})
    1767323045.123456
    """
    stamp = str(alert["activeAt"]).rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    parsed = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    return parsed.timestamp() + float(f"0.{fraction[:6] or '0'}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
