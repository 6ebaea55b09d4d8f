"""Developer tooling: every image the compose file and the tests use has an offline
stand-in, the engine helper tells an answering engine from a silent socket, and the local
Prometheus is configured as Prometheus accepts."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from livelearn import StackError
from livelearn.devtools import engine, images, prometheus
from tests.conftest import KAFKA_IMAGE, REDIS_IMAGE

REPO = Path(__file__).resolve().parents[2]
# Built from the Dockerfile, and Grafana, which has no stand-in (its profile is off).
NOT_STANDINS = {"livelearn:local", "grafana/grafana:12.1.1"}


def test_every_image_the_compose_file_uses_has_a_standin() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    used = {service["image"] for service in services.values() if "image" in service}
    assert used - NOT_STANDINS <= images.offline_images().keys()
    assert {"livelearn:local", "grafana/grafana:12.1.1"} <= used


def test_the_dockerfiles_base_and_the_test_containers_have_standins() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert base is not None
    assert {base.group(1), KAFKA_IMAGE, REDIS_IMAGE} <= images.offline_images().keys()


def test_an_unknown_image_is_refused_by_name() -> None:
    with pytest.raises(images.ImageError, match="no offline stand-in for nginx:latest"):
        images.ensure(["nginx:latest"])


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/_ping" else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket that answers ``GET /_ping`` as the Docker API does."""
    path = tmp_path / "docker.sock"
    server = _UnixHTTPServer(str(path), _Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()
    thread.join()


def test_answers_follows_docker_host(fake_engine: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{fake_engine}")
    assert engine.answers()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    assert not engine.answers(timeout=0.5)


def test_down_stops_nothing_it_did_not_start(tmp_path: Path) -> None:
    assert engine.status(tmp_path) is None
    assert engine.down(tmp_path) is False
    # A PID file left by an engine that has gone, its PID now someone else's (this process).
    (tmp_path / "dockerd.pid").write_text(f"{os.getpid()}\n")
    assert engine.status(tmp_path) is None
    assert engine.down(tmp_path) is False
    assert not (tmp_path / "dockerd.pid").exists()


def test_the_local_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The configuration LocalPrometheus writes is one Prometheus accepts, with the rules,
    and scrapes the job the rules name."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool on PATH (Debian's prometheus package)")
    local = prometheus.LocalPrometheus(tmp_path, ["127.0.0.1:9400"], interval_s=0.5)
    config = local.config()
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout
    assert config["scrape_configs"][0]["job_name"] == "livelearn-worker"
    assert 'job="livelearn-worker"' in prometheus.ALERTS.read_text()


def test_a_missing_prometheus_says_what_to_install(tmp_path: Path) -> None:
    local = prometheus.LocalPrometheus(tmp_path, [], binary="no-such-prometheus")
    with pytest.raises(StackError, match="apt-get install --no-install-recommends prometheus"):
        local.start()
