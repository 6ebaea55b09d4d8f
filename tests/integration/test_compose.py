"""The whole system under Docker Compose, on the real engine, as a user runs it.

``docker-compose.yml`` comes up with Kafka, Redis, two workers (one on each Kafka client,
``kafka.client``: kafka-python and confluent), the API and Prometheus
(images pulled, or built as stand-ins where no registry answers: `devtools.images`), on
free host ports and under a project name of its own, so it stands beside anything else
on the machine. Grafana's image cannot be made offline: instead of starting it, the test
checks that every metric its dashboard queries is one the running stack declares.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from livelearn.devtools import images
from tests.conftest import REPO, DockerEngine
from tests.integration.conftest import encode, free_port, phishing_events, produce, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

TOPIC = "phishing"
PARTITIONS = 4  # as the compose file's `topics` service creates it
TOKEN = "compose-test-token-0123456789"
SERVICES = ["kafka", "redis", "topics", "worker", "api", "prometheus"]


@dataclass
class ComposeStack:
    """A running compose project and the host ports it publishes."""

    project: str
    env: dict[str, str]
    env_file: Path
    kafka_port: int
    api_port: int
    prometheus_port: int

    def compose(self, *args: str, timeout: float = 120) -> str:
        command = [*images.compose_command(), "--project-name", self.project,
                   "--env-file", str(self.env_file), "-f", str(REPO / "docker-compose.yml"),
                   *args]  # fmt: skip
        result = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}\n"
                f"{self.logs()}"
            )
        return result.stdout

    def logs(self) -> str:
        command = [*images.compose_command(), "--project-name", self.project,
                   "--env-file", str(self.env_file), "-f", str(REPO / "docker-compose.yml"),
                   "logs", "--no-color", "--tail", "30"]  # fmt: skip
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        return "compose logs (tail):\n" + result.stdout[-6000:]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def model(self) -> dict[str, Any]:
        """``livelearn models show phishing --json``, run in the API's container."""
        out = self.compose("exec", "-T", "api", "livelearn", "models", "show", TOPIC, "--json")
        return dict(json.loads(out))

    def prometheus(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.prometheus_port}{path}{query}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[str, float]:
        """An instant query: instance (or the series' labels) -> value."""
        result = self.prometheus("/api/v1/query", query=promql)["result"]
        return {
            row["metric"].get("instance", json.dumps(row["metric"])): float(row["value"][1])
            for row in result
        }

    def predict(self, features: dict[str, float]) -> dict[str, Any] | None:
        """The API's answer, or None while it has no model loaded (503)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/v1/models/{TOPIC}/predict",
            data=json.dumps({"features": features}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as error:
            if error.code == 503:
                return None
            raise

    def ui_status(self) -> dict[str, Any]:
        """What the status page shows (``GET /v1/ui/status``)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/v1/ui/status",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def wait_served(
        self, features: dict[str, float], ends: dict[int, int], what: str
    ) -> dict[str, Any]:
        """The API's prediction, once it comes from shards at exactly ``ends`` (partition ->
        next offset)."""

        def served() -> dict[str, Any] | None:
            prediction = self.predict(features)
            return prediction if _served_offsets(prediction) == ends else None

        return dict(wait_for(served, 60, f"the API to serve {what}", every=0.5, context=self.logs))

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes that still carry this project's label."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, command in {
            "containers": ["docker", "ps", "-aq", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
        }.items():
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            found[kind] = out.split()
        return found


@pytest.fixture
def compose_stack(docker_engine: DockerEngine, tmp_path: Path) -> Iterator[ComposeStack]:
    """The compose project, up and healthy, with two workers; removed with its volumes."""
    docker_engine.require()
    images.ensure(images.offline_images())  # Kafka, Redis, Prometheus and the Python base
    env_file = tmp_path / "compose.env"  # never the user's own .env beside the compose file
    env_file.write_text("")
    stack = ComposeStack(
        project=f"livelearn-test-{uuid.uuid4().hex[:8]}",
        env={
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(tmp_path),
            "LIVELEARN_SECURITY__SNAPSHOT_KEY": secrets.token_hex(32),
            "LIVELEARN_SECURITY__HASH_KEY": secrets.token_hex(32),
            "LIVELEARN_SERVING__TOKENS": json.dumps([TOKEN]),
        },
        env_file=env_file,
        kafka_port=free_port(),
        api_port=free_port(),
        prometheus_port=free_port(),
    )
    stack.env.update(
        KAFKA_HOST_PORT=str(stack.kafka_port),
        API_HOST_PORT=str(stack.api_port),
        PROMETHEUS_HOST_PORT=str(stack.prometheus_port),
        # The first worker on the pure-Python client, the second on the default (librdkafka).
        LIVELEARN_KAFKA__CLIENT="kafka-python",
    )
    try:
        stack.compose("up", "--detach", "--build", "--quiet-build", "--wait",
                      "--wait-timeout", "300", "--scale", "worker=1", *SERVICES,
                      timeout=600)  # fmt: skip
        # The second worker on the other Kafka client (librdkafka): one group holds both.
        stack.env["LIVELEARN_KAFKA__CLIENT"] = "confluent"
        stack.compose("up", "--detach", "--no-recreate", "--wait", "--wait-timeout", "120",
                      "--scale", "worker=2", "worker", timeout=180)  # fmt: skip
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")


def test_compose_stack_learns_serves_scales_and_cleans_up(compose_stack: ComposeStack) -> None:
    stack = compose_stack
    probe = phishing_events(1)[0]["features"]
    assert stack.predict(probe) is None, "the API serves a model before anything was learned"

    # Learn: the first half of Phishing, and one malformed record that must be dead-lettered.
    first = phishing_events(600)
    produce(stack.bootstrap, TOPIC, [b"{not json", *encode(first)], partitions=PARTITIONS)
    wait_for(
        lambda: stack.model()["events_learned"] == len(first),
        120,
        "the workers to learn the first batch",
        every=1,
        context=stack.logs,
    )
    first_ends = _end_offsets(stack.bootstrap)
    before = stack.wait_served(probe, first_ends, "the first batch's model")

    # Prometheus scrapes both workers and the API, both workers own partitions, and the
    # alert rules are loaded.
    assigned = wait_for(
        lambda: (
            (rows := stack.query("livelearn_assigned_partitions"))
            and len(rows) == 2
            and all(value > 0 for value in rows.values())
            and sum(rows.values()) == PARTITIONS
            and rows
        ),
        90,
        "Prometheus to see two workers sharing the partitions",
        every=1,
        context=stack.logs,
    )
    assert stack.query('up{job="livelearn-worker"} == 1').keys() == assigned.keys()
    assert list(stack.query('up{job="livelearn-api"} == 1').values()) == [1.0]
    rule_names = {
        rule["name"] for group in stack.prometheus("/api/v1/rules")["groups"]
        for rule in group["rules"]
    }  # fmt: skip
    assert rule_names == _alert_names(), "Prometheus did not load every rule of alerts.yml"
    # The status page reads its firing alerts from that Prometheus (serving.alerts_url).
    wait_for(
        lambda: stack.ui_status()["alerts"]["source"] == "prometheus",
        30,
        "the status page to read Prometheus' alerts",
        every=1,
        context=lambda: f"{stack.ui_status()['alerts']}\n{stack.logs()}",
    )
    # The malformed record was dead-lettered, and counted (more than once only if a
    # rebalance moved its partition before a checkpoint covered it: the design allows it).
    wait_for(
        lambda: sum(stack.query("livelearn_dead_letters_total").values()) >= 1,
        30,
        "Prometheus to scrape the dead letter's count",
        every=1,
        context=stack.logs,
    )

    # The Grafana dashboard queries only metric families that the workers or the API
    # declare (the API's: a release's reference, beside the worker's estimate).
    declared = {
        row["metric"] for row in stack.prometheus(
            "/api/v1/targets/metadata",
            match_target='{job=~"livelearn-worker|livelearn-api"}',
        )
    }  # fmt: skip
    assert _dashboard_metrics() <= declared, _dashboard_metrics() - declared

    # One worker of each Kafka client shares the group (both offer the eager assignors).
    clients = [
        stack.compose("exec", "-T", "--index", str(index), "worker",
                      "printenv", "LIVELEARN_KAFKA__CLIENT").strip()
        for index in (1, 2)
    ]  # fmt: skip
    assert sorted(clients) == ["confluent", "kafka-python"], clients
    # Kill one worker (SIGKILL, no final checkpoint): the other takes every partition over
    # and learns the second half exactly once, resuming from the killed one's checkpoints.
    victim, survivor = stack.compose("ps", "--quiet", "worker").split()
    subprocess.run(["docker", "kill", "--signal", "KILL", victim], check=True, capture_output=True)
    wait_for(
        lambda: list(stack.query("livelearn_assigned_partitions").values()) == [PARTITIONS],
        120,
        "the surviving worker to own every partition",
        every=1,
        context=stack.logs,
    )
    second = phishing_events(650, start=600)
    produce(stack.bootstrap, TOPIC, encode(second), partitions=PARTITIONS)
    total = len(first) + len(second)
    model = wait_for(
        lambda: (m := stack.model())["events_learned"] >= total and m,
        120,
        "the surviving worker to learn the second batch",
        every=1,
        context=stack.logs,
    )
    ends = _end_offsets(stack.bootstrap)
    assert model["events_learned"] == total, "an event was learned twice"
    assert {s["partition"]: s["next_offset"] for s in model["shards"]} == ends
    running = stack.compose("ps", "--quiet", "worker").split()
    assert running == [survivor]
    after = stack.wait_served(probe, ends, "the second batch's model")
    assert after["proba"] != before["proba"], "the served prediction did not change"

    # Down with volumes leaves nothing of the project behind.
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}


def _served_offsets(prediction: dict[str, Any] | None) -> dict[int, int] | None:
    """Partition -> next offset of each shard that the API's prediction used."""
    if prediction is None:
        return None
    return {int(name.rpartition("/")[2]): offset for name, offset in prediction["shards"].items()}


def _end_offsets(bootstrap: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def _alert_names() -> set[str]:
    spec = yaml.safe_load((REPO / "config" / "alerts.yml").read_text())
    return {rule["alert"] for group in spec["groups"] for rule in group["rules"]}


def _dashboard_metrics() -> set[str]:
    """The metric families in the Grafana dashboard's queries (histogram suffixes removed)."""
    text = (REPO / "config" / "grafana" / "dashboards" / "livelearn.json").read_text()
    names = set(re.findall(r"\blivelearn_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
