"""Settings: YAML plus environment overrides; bad values name the setting and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from livelearn import ConfigError
from livelearn.settings import load_settings

SPEC = {
    "name": "m",
    "topics": ["t"],
    "task": "binary",
    "pipeline": [{"class": "linear_model.LogisticRegression"}],
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch) -> None:
    """CI exports the stack's LIVELEARN_* variables; these tests start without them."""
    import os

    for name in list(os.environ):
        if name.startswith("LIVELEARN_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_then_environment_overrides(tmp_path, monkeypatch) -> None:
    path = _write(
        tmp_path, {"kafka": {"group_id": "from-yaml", "bootstrap_servers": "a:1"}, "models": [SPEC]}
    )
    monkeypatch.setenv("LIVELEARN_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("LIVELEARN_SECURITY__SNAPSHOT_KEY", "k" * 32)
    settings = load_settings(path)
    assert settings.kafka.group_id == "from-env"
    assert settings.kafka.bootstrap_servers == "a:1"
    assert settings.require_secret("snapshot_key") == b"k" * 32
    assert "k" * 32 not in repr(settings) and "k" * 32 not in str(settings.model_dump())


def test_the_shipped_config_loads() -> None:
    settings = load_settings(Path("config/livelearn.yaml"))
    assert settings.model("phishing").task == "binary"


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (
            {"kafka": {"auto_offset_reset": "middle"}},
            ["kafka.auto_offset_reset", "'middle'", "LIVELEARN_KAFKA__AUTO_OFFSET_RESET"],
        ),
        ({"http": {"port": 70000}}, ["http.port", "70000"]),
        ({"kafka": {"no_such": 1}}, ["kafka.no_such"]),
        ({"models": [{**SPEC, "pipeline": [{"class": "os.system"}]}]}, ["models[0].pipeline[0]"]),
        ({"models": [{**SPEC, "topics": []}]}, ["models[0].topics"]),
        ({"models": [SPEC, SPEC]}, ["used twice"]),
        (
            {"serving": {"max_connections": 100, "max_connections_per_client": 200}},
            [
                "serving.max_connections_per_client (200)",
                "serving.max_connections (100)",
                "LIVELEARN_SERVING__MAX_CONNECTIONS_PER_CLIENT",
            ],
        ),
        ({"serving": {"max_connections_per_client": 0}}, ["serving.max_connections_per_client"]),
        (
            {"redis": {"socket_timeout_s": 1, "wait_timeout_ms": 1000}},
            ["redis.wait_timeout_ms (1000)", "redis.socket_timeout_s", "LIVELEARN_REDIS__"],
        ),
        ({"redis": {"wait_replicas": -1}}, ["redis.wait_replicas"]),
    ],
    ids=[
        "literal",
        "range",
        "unknown-key",
        "outside-river",
        "no-topic",
        "duplicate-model",
        "client-over-server",
        "client-none",
        "wait-past-socket-timeout",
        "wait-replicas-negative",
    ],
)
def test_bad_settings_name_the_setting(tmp_path, data, needles) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, data))
    for needle in needles:
        assert needle in str(info.value)


def test_a_lower_connection_limit_needs_no_cap_per_client(tmp_path) -> None:
    settings = load_settings(_write(tmp_path, {"serving": {"max_connections": 3}}))
    assert settings.serving.max_connections == 3  # the server caps a client at 3 too


def test_a_secret_value_never_appears_in_the_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIVELEARN_SECURITY__SNAPSHOT_KEY", "short")
    settings = load_settings(_write(tmp_path, {}))
    with pytest.raises(ConfigError) as info:
        settings.require_secret("snapshot_key")
    assert "short" not in str(info.value).replace("too short", "")
    assert "LIVELEARN_SECURITY__SNAPSHOT_KEY" in str(info.value)


def test_a_list_setting_that_is_not_json_names_the_variable_and_hides_the_value(
    tmp_path, monkeypatch
) -> None:
    # A shell that drops the quotes turns '["s3cret-token"]' into [s3cret-token].
    monkeypatch.setenv("LIVELEARN_SERVING__TOKENS", "[s3cret-token]")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, {}))
    message = str(info.value)
    assert "LIVELEARN_SERVING__TOKENS is not valid JSON" in message
    assert "s3cret" not in message


def test_missing_services_name_the_settings(tmp_path) -> None:
    settings = load_settings(_write(tmp_path, {}))
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers"):
        settings.require_services()


def test_a_missing_config_file_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
