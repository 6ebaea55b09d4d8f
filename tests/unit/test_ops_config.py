"""The deployment files agree with the code: compose mounts exist, workers scale, every
metric an alert or a dashboard panel queries is one the worker exports, and the alert rules
pass their promtool unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from livelearn.serving.metrics import ServingMetrics
from livelearn.stream.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "config" / "prometheus.yml"
ALERTS = REPO / "config" / "alerts.yml"
ALERTS_TEST = REPO / "config" / "alerts_test.yml"
GRAFANA = REPO / "config" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "livelearn.json"

METRIC_NAME = re.compile(r"\blivelearn_[a-z0-9_]*[a-z0-9]")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SEVERITIES = {"warning", "critical"}


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _exported_names() -> set[str]:
    """Every series name the worker's and the API's registries can expose, histogram series
    included."""
    names: set[str] = set()
    registries = (WorkerMetrics(CollectorRegistry()).registry, ServingMetrics().registry)
    families = [family for registry in registries for family in registry.collect()]
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names


def _unknown_metrics(exprs: dict[str, str]) -> dict[str, list[str]]:
    """Per expression's owner, the ``livelearn_*`` names it uses that the worker lacks."""
    known = _exported_names()
    unknown = {
        owner: sorted(set(METRIC_NAME.findall(expr)) - known) for owner, expr in exprs.items()
    }
    return {owner: names for owner, names in unknown.items() if names}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _promtool() -> tuple[list[str] | None, str]:
    """A ``promtool`` command run in config/: the binary on PATH, or the one in compose's
    Prometheus image on the local Docker engine; else None and why."""
    if binary := shutil.which("promtool"):
        return [binary], ""
    image = _load_yaml(COMPOSE)["services"]["prometheus"]["image"]
    if not shutil.which("docker"):
        return None, f"no promtool on PATH and no docker command to run {image}"
    inspect = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, timeout=60, check=False
    )
    if inspect.returncode != 0:
        return None, f"no promtool on PATH and no {image} image on the Docker engine"
    config = REPO / "config"
    return [
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "promtool",
        "-v",
        f"{config}:/config:ro",
        "-w",
        "/config",
        image,
    ], ""


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels, with those nested in collapsed rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def _bind_sources(service: dict[str, Any]) -> list[str]:
    """Host paths a service bind-mounts (short or long volume syntax)."""
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
        elif volume.get("type") == "bind":
            source = volume["source"]
        else:
            continue
        if source.startswith((".", "/", "~")):
            sources.append(source)
    return sources


# -- docker-compose.yml ---------------------------------------------------------------


def test_every_bind_mounted_host_path_exists() -> None:
    services = _load_yaml(COMPOSE)["services"]
    mounts = [(name, src) for name, svc in services.items() for src in _bind_sources(svc)]
    assert mounts, "expected the Prometheus and Grafana config mounts"
    missing = [(name, src) for name, src in mounts if not (REPO / src).exists()]
    assert not missing, f"services mount host paths that do not exist: {missing}"


def test_the_worker_service_can_be_scaled() -> None:
    worker = _load_yaml(COMPOSE)["services"]["worker"]
    assert "container_name" not in worker, "a fixed container_name stops --scale worker=N"
    assert "ports" not in worker, "a host port collides between replicas; Prometheus uses DNS"
    assert "build" in worker


def test_worker_secrets_come_from_the_environment_and_are_required() -> None:
    env = _load_yaml(COMPOSE)["services"]["worker"]["environment"]
    for key in ("LIVELEARN_SECURITY__SNAPSHOT_KEY", "LIVELEARN_SECURITY__HASH_KEY"):
        assert env[key] == f"${{{key}:?set it in .env}}", f"{key} must not be written here"
    # The image listens on every interface; compose must not narrow it to loopback, where
    # Prometheus cannot scrape.
    assert env.get("LIVELEARN_HTTP__HOST", "0.0.0.0") == "0.0.0.0"
    assert "LIVELEARN_HTTP__HOST=0.0.0.0" in (REPO / "Dockerfile").read_text()


# -- Prometheus -----------------------------------------------------------------------


def test_prometheus_loads_the_alert_rules_and_discovers_workers_by_dns() -> None:
    config = _load_yaml(PROMETHEUS)
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["livelearn-worker"]["dns_sd_configs"][0]
    assert dns["type"] == "A" and dns["port"] == 9400
    assert set(dns["names"]) & {"worker", "tasks.worker"}


def test_alert_rules_only_query_metrics_the_worker_exports() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert not _unknown_metrics(exprs)


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_alert_rule_says_how_long_how_bad_and_what_to_do(rule: dict[str, Any]) -> None:
    assert "for" in rule
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    command, why_not = _promtool()
    if command is None:
        pytest.skip(why_not)
    result = subprocess.run(
        [*command, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_promtool_tests_load_the_rules_and_name_only_rules_that_exist() -> None:
    tests = _load_yaml(ALERTS_TEST)
    assert tests["rule_files"] == [ALERTS.name]
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert tested <= {rule["alert"] for rule in _rules()}
    assert "LivelearnDeadLetterUndelivered" in tested


# -- Grafana --------------------------------------------------------------------------


def test_dashboard_panels_only_query_metrics_the_worker_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    }
    assert len(exprs) >= 10
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query", "")
        exprs[f"${variable['name']}"] = query["query"] if isinstance(query, dict) else query
    assert not _unknown_metrics(exprs)


def test_dashboard_uses_the_provisioned_datasource() -> None:
    (datasource,) = _load_yaml(GRAFANA / "datasources" / "prometheus.yml")["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {
        panel["datasource"]["uid"]
        for panel in _panels(dashboard["panels"])
        if panel.get("type") != "row"
    }
    assert uids == {datasource["uid"]}


def test_grafana_reads_dashboards_from_where_compose_mounts_them() -> None:
    (provider,) = _load_yaml(GRAFANA / "dashboards" / "dashboards.yml")["providers"]
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
    targets = {v.split(":")[1] for v in grafana["volumes"] if v.startswith("./config/grafana/")}
    assert provider["options"]["path"] in targets
