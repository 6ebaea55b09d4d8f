"""`make run`, then `livelearn serve`: the demo learns on the local stack with its
development keys, and serve, given no key either, serves what it learned with the same keys
and the token the demo pointed to, with a warning and never a key's value in the output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO, Services
from tests.integration.conftest import free_port, phishing_events, wait_for

pytestmark = pytest.mark.integration

KEY_ENV = ("LIVELEARN_SECURITY__", "LIVELEARN_SERVING__TOKENS")


def _as_the_local_stack(services: Services, state_dir: Path) -> None:
    """Record the session's servers where `livelearn stack up` records its ports, so that
    the command line takes them for the local stack (the real one's ports may be taken)."""
    redis = urllib.parse.urlsplit(services.redis_url)
    if redis.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip(f"the local stack's Redis is on loopback; the session's is on {redis.hostname}")
    kafka_port = int(services.bootstrap_servers.rsplit(":", 1)[1])
    state_dir.mkdir()
    ports = {"kafka_port": kafka_port, "redis_port": redis.port}
    (state_dir / "ports.json").write_text(json.dumps(ports) + "\n")


def test_serve_after_the_demo_uses_its_development_keys(
    services: Services, make_topic: Callable[..., str], unique_name: str, tmp_path: Path
) -> None:
    state_dir = tmp_path / "stack"
    _as_the_local_stack(services, state_dir)
    topic = make_topic(partitions=1)
    shipped = yaml.safe_load((REPO / "config" / "livelearn.yaml").read_text())
    (spec,) = shipped["models"]
    api_port = free_port()
    config: dict[str, Any] = {
        **shipped,
        "kafka": {**shipped["kafka"], "group_id": f"g-{unique_name}"},
        "redis": {"key_prefix": f"ll-{unique_name}"},
        "http": {"port": free_port()},
        "serving": {"port": api_port},
        "log": {"format": "json", "level": "INFO"},
        "models": [{**spec, "name": unique_name, "topics": [topic]}],
    }
    config_path = tmp_path / "livelearn.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {name: value for name, value in os.environ.items() if not name.startswith(KEY_ENV)}
    env |= {
        "LIVELEARN_STACK_DIR": str(state_dir),
        "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "LIVELEARN_REDIS__URL": services.redis_url,
    }

    def livelearn(*args: str) -> list[str]:
        return [sys.executable, "-m", "livelearn.cli.main", "--config", str(config_path), *args]

    demo = subprocess.run(
        livelearn("demo", "--model", unique_name, "--rate", "5000"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    keys = json.loads((state_dir / "dev-keys.json").read_text())
    secrets = [v for k, v in keys.items() if k != "LIVELEARN_SERVING__TOKENS"]
    (token,) = json.loads(keys["LIVELEARN_SERVING__TOKENS"])
    secrets.append(token)
    assert "DEVELOPMENT keys" in demo.stderr
    assert "1250 events learned" in demo.stdout
    assert f"--config {config_path} serve" in demo.stdout.splitlines()[-2]
    assert f"http://127.0.0.1:{api_port}/ui" in demo.stdout.splitlines()[-1]
    assert "stack token" in demo.stdout.splitlines()[-1]
    assert all(secret not in demo.stdout + demo.stderr for secret in secrets)

    printed = subprocess.run(
        livelearn("stack", "token"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert printed.stdout.strip() == token

    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        server = subprocess.Popen(livelearn("serve"), cwd=REPO, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{api_port}"

    def tail() -> str:
        return "serve's log:\n" + log_path.read_text(errors="replace")[-3000:]

    def answers(path: str) -> bool:
        if server.poll() is not None:
            pytest.fail(f"livelearn serve exited with {server.returncode}\n{tail()}")
        try:
            return httpx.get(base + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(lambda: answers("/healthz"), 60, "serve's /healthz", context=tail)
        wait_for(lambda: answers("/readyz"), 30, "serve's /readyz", context=tail)
        event = phishing_events(1)[0]
        answer = httpx.post(
            f"{base}/v1/models/{unique_name}/predict",
            json={"features": event["features"]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["shards"] == {f"{topic}/0": 1250}
        assert isinstance(answer.json()["prediction"], bool)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert server.returncode == 0, tail()
    log = log_path.read_text()
    assert "DEVELOPMENT keys" in log and "not for production" in log
    assert all(secret not in log for secret in secrets)
