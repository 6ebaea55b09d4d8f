"""`make run`, then `livelearn serve`: the demo learns on the local stack with its
development keys, and serve, given no key either, serves what it learned with the same keys
and the token the demo pointed to, with a warning and never a key's value in the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.conftest import REPO, Services
from tests.integration.conftest import ServerHandle, free_port, phishing_events

pytestmark = pytest.mark.integration

KEY_ENV = ("LIVELEARN_SECURITY__", "LIVELEARN_SERVING__TOKENS")


def _as_the_local_stack(services: Services, state_dir: Path) -> str:
    """Record the session's servers where `livelearn stack up` records its ports, so that
    the command line takes them for the local stack (the real one's ports may be taken);
    return the session's Redis URL on loopback, where the local stack's Redis listens.

    A container's published port answers on loopback too, so testcontainers' Redis (at the
    engine's bridge address) is the same server at 127.0.0.1 and the same port.
    """
    redis_url = urllib.parse.urlsplit(services.redis_url)
    loopback = redis_url._replace(netloc=f"127.0.0.1:{redis_url.port}").geturl()
    probe = f"livelearn-test-{uuid.uuid4().hex}"
    with (
        redis.Redis.from_url(services.redis_url) as session,
        redis.Redis.from_url(loopback) as local,
    ):
        session.set(probe, 1, ex=60)
        assert local.get(probe) == b"1", f"{loopback} is not the session's Redis"
    kafka_port = int(services.bootstrap_servers.rsplit(":", 1)[1])
    state_dir.mkdir()
    ports = {"kafka_port": kafka_port, "redis_port": redis_url.port}
    (state_dir / "ports.json").write_text(json.dumps(ports) + "\n")
    return loopback


def test_serve_after_the_demo_uses_its_development_keys(
    services: Services, make_topic: Callable[..., str], unique_name: str, tmp_path: Path
) -> None:
    state_dir = tmp_path / "stack"
    redis_url = _as_the_local_stack(services, state_dir)
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
        "LIVELEARN_REDIS__URL": redis_url,
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
        proc = subprocess.Popen(livelearn("serve"), cwd=REPO, env=env, stdout=out, stderr=out)
    server = ServerHandle(proc, log_path, api_port, token)
    try:
        server.wait_ready(timeout=60)
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        event = phishing_events(1)[0]
        answer = httpx.post(
            f"{server.url}/v1/models/{unique_name}/predict",
            json={"features": event["features"]},
            headers=server.auth,
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["shards"] == {f"{topic}/0": 1250}
        assert isinstance(answer.json()["prediction"], bool)
    finally:
        if proc.poll() is None:
            assert server.terminate() == 0, server.tail()
    assert proc.returncode == 0, server.tail()
    log = log_path.read_text()
    assert "DEVELOPMENT keys" in log and "not for production" in log
    assert all(secret not in log for secret in secrets)
