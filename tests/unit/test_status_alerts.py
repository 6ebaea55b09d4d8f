"""The status page's firing alerts from Prometheus (serving.alerts_url, serving/alerts.py),
and the fallback to alerts derived from the served state."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from livelearn.errors import ConfigError
from livelearn.serving.alerts import AlertsView, FiringAlert, PrometheusAlerts, parse_alerts
from livelearn.serving.ui import StatusBoard
from livelearn.settings import load_settings
from livelearn.store.timeline import TimelineRead
from tests.fake_prometheus import alerts_answer, fake_prometheus

ANSWER = {
    "status": "success",
    "data": {
        "alerts": [
            {
                "labels": {"alertname": "LivelearnDriftDetected", "model": "fraud", "topic": "t"},
                "state": "firing",
                "activeAt": "2026-11-27T10:00:00Z",
            },
            {"labels": {"alertname": "LivelearnHoldoutGap", "model": "fraud"}, "state": "pending"},
            {
                "labels": {
                    "alertname": "LivelearnKafkaUnavailable",
                    "instance": "w1:9400",
                    "dependency": "kafka",
                },
                "state": "firing",
            },
            {"labels": "not a mapping", "state": "firing"},
        ]
    },
}


def _describe(name: str, freshness_s: float = 1.0) -> dict[str, Any]:
    shard = {
        "topic": "t",
        "partition": 0,
        "next_offset": 10,
        "updated_at": 1000.0,
        "version": 3,
        "events_learned": 10,
        "drift_detections": 0,
        "metrics": {"Accuracy": 0.9},
        "rolling_metrics": {"Accuracy": 0.9},
    }
    return {
        "task": "binary",
        "release": None,
        "shards": [shard],
        "events_learned": 10,
        "freshness_seconds": freshness_s,
    }


def test_only_firing_alerts_are_read_from_the_answer() -> None:
    alerts = parse_alerts(json.dumps(ANSWER).encode())
    assert [(a.name, a.model) for a in alerts] == [
        ("LivelearnDriftDetected", "fraud"),
        ("LivelearnKafkaUnavailable", None),
    ]
    assert alerts[0].active_at == "2026-11-27T10:00:00Z"
    with pytest.raises(ValueError, match="not a Prometheus answer"):
        parse_alerts(b'{"status": "error", "error": "bad query"}')


def _no_timeline(model: str, after: str | None, count: int) -> TimelineRead:
    return TimelineRead([], None)


def test_models_show_their_prometheus_alerts_and_the_page_the_others() -> None:
    view = AlertsView(parse_alerts(json.dumps(ANSWER).encode()), read_at=5.0)
    board = StatusBoard(
        lambda: ["fraud", "churn"], _describe, lambda: 1010.0, lambda: view, timeline=_no_timeline
    )
    status = board.status()
    assert status["alerts"] == {
        "source": "prometheus",
        "error": None,
        "other": ["LivelearnKafkaUnavailable (w1:9400, kafka)"],
    }
    firing = {m["model"]: m["firing"] for m in status["models"]}
    assert firing == {"fraud": ["LivelearnDriftDetected"], "churn": []}


def test_without_prometheus_the_alerts_are_derived_and_the_error_shown() -> None:
    failed = AlertsView(
        [FiringAlert("X", {"model": "fraud"})], 5.0, "Prometheus at p did not answer"
    )
    for alerts, error in ((None, None), (lambda: failed, failed.error)):
        # A checkpoint 20 minutes old: "stale", derived from the served state.
        board = StatusBoard(
            lambda: ["fraud"],
            lambda name: _describe(name, 1200.0),
            lambda: 2200.0,
            alerts,
            timeline=_no_timeline,
        )
        status = board.status()
        assert status["alerts"] == {"source": "derived", "error": error, "other": []}
        assert status["models"][0]["firing"] == ["stale"]


def test_a_failed_read_keeps_the_last_alerts_and_never_logs_the_url(caplog) -> None:
    answers: list[bytes | Exception] = [
        json.dumps(ANSWER).encode(),
        OSError("connection refused by http://admin:s3cret@prom:9090/api/v1/alerts"),
    ]

    def read(url: str, timeout_s: float) -> bytes:
        assert url == "http://admin:s3cret@prom:9090/api/v1/alerts"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    alerts = PrometheusAlerts("http://admin:s3cret@prom:9090/", read=read, clock=lambda: 7.0)
    assert alerts.refresh().error is None
    with caplog.at_level(logging.WARNING, logger="livelearn.api"):
        view = alerts.refresh()
    assert view.error == "Prometheus at prom did not answer: OSError"
    assert view.read_at == 7.0 and len(view.alerts) == 2  # the last answer, kept
    assert "s3cret" not in caplog.text and "prom did not answer" in caplog.text


@pytest.fixture
def prometheus() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    answers: list[dict[str, Any]] = [ANSWER]
    with fake_prometheus(answers) as url:
        yield url, answers


def test_alerts_are_read_over_http_on_a_thread_of_their_own(prometheus) -> None:
    url, answers = prometheus
    alerts = PrometheusAlerts(url, every_s=0.05)
    try:
        assert alerts.current().read_at is None  # the first call starts the thread only
        _wait(lambda: alerts.current().read_at is not None)
        assert next(a.name for a in alerts.current().alerts) == "LivelearnDriftDetected"
        answers.append(alerts_answer())
        _wait(lambda: alerts.current().alerts == [])
    finally:
        alerts.close()


def test_an_alerts_url_that_is_not_http_is_refused_naming_the_setting(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("serving:\n  alerts_url: file:///etc/passwd\n")
    with pytest.raises(ConfigError, match=r"serving\.alerts_url"):
        load_settings(path)


def _wait(condition: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
