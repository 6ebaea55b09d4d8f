"""`livelearn serve` (and the demo) on the local stack use its development keys, with a
warning; anywhere else a missing key stops them with a message naming the setting. No key's
value is ever printed or logged (cli/devkeys.py)."""

from __future__ import annotations

import gc
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from livelearn import ConfigError
from livelearn.cli import devkeys
from livelearn.cli import main as cli_main
from livelearn.devtools import stack
from livelearn.serving import api as serving_api
from livelearn.serving import lookup as serving_lookup
from livelearn.settings import Settings

STACK_REDIS = "redis://127.0.0.1:16379/0"  # where `make run` puts Redis (devtools.stack)
OTHER_REDIS = "redis://redis.internal:6379/0"
SNAPSHOT_ENV = "LIVELEARN_SECURITY__SNAPSHOT_KEY"
HASH_ENV = "LIVELEARN_SECURITY__HASH_KEY"
TOKENS_ENV = "LIVELEARN_SERVING__TOKENS"
SERVE_NEEDS: tuple[devkeys.Key, ...] = ("snapshot_key", "tokens")  # as _cmd_serve


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI may export LIVELEARN_* variables; these tests choose their own settings."""
    for name in list(os.environ):
        if name.startswith("LIVELEARN_"):
            monkeypatch.delenv(name)


@pytest.fixture
def stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The command line's stack folder, empty: no stack was ever started there."""
    folder = tmp_path / "stack"
    monkeypatch.setattr(cli_main, "STACK_DIR", folder)
    return folder


@pytest.fixture
def demo_keys(stack_dir: Path) -> dict[str, str]:
    """The keys file as `make run` wrote it before it kept a token."""
    keys = {SNAPSHOT_ENV: "s" * 64, HASH_ENV: "h" * 64}
    stack_dir.mkdir()
    (stack_dir / devkeys.FILE_NAME).write_text(json.dumps(keys))
    return keys


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`setup_logging` replaces the root logger's handlers: put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _secrets(state_dir: Path) -> list[str]:
    keys = json.loads((state_dir / devkeys.FILE_NAME).read_text())
    return [keys[SNAPSHOT_ENV], keys[HASH_ENV], *json.loads(keys[TOKENS_ENV])]


def _settings(**sections: Any) -> Settings:
    return Settings(**sections)


def test_on_the_stacks_redis_serve_uses_the_demos_keys_and_warns(
    stack_dir: Path, demo_keys: dict[str, str], caplog: pytest.LogCaptureFixture, capsys
) -> None:
    with caplog.at_level(logging.WARNING, logger="livelearn"):
        settings = devkeys.use_local(
            _settings(redis={"url": STACK_REDIS}),
            stack_dir,
            SERVE_NEEDS,
            start=False,
            optional=("hash_key",),
        )
    assert settings.require_secret("snapshot_key") == demo_keys[SNAPSHOT_ENV].encode()
    assert settings.require_secret("hash_key") == demo_keys[HASH_ENV].encode()
    # The token the demo's file lacked is made and kept there, with the demo's keys.
    kept = json.loads((stack_dir / devkeys.FILE_NAME).read_text())
    assert {k: kept[k] for k in demo_keys} == demo_keys
    (token,) = json.loads(kept[TOKENS_ENV])
    assert [t.get_secret_value() for t in settings.serving.tokens] == [token]
    assert devkeys.dev_token(stack_dir) == token
    assert stat.S_IMODE((stack_dir / devkeys.FILE_NAME).stat().st_mode) == 0o600

    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert "DEVELOPMENT keys" in message and "not for production" in message
    assert str(stack_dir / devkeys.FILE_NAME) in message
    for name in ("security.snapshot_key", "security.hash_key", "serving.tokens"):
        assert name in message
    for env in (SNAPSHOT_ENV, HASH_ENV, TOKENS_ENV):
        assert env in message
    shown = caplog.text + "".join(capsys.readouterr())
    assert all(secret not in shown for secret in _secrets(stack_dir))


def test_a_configured_key_is_kept_and_only_the_missing_ones_come_from_the_stack(
    stack_dir: Path, demo_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    mine = "m" * 40
    with caplog.at_level(logging.WARNING, logger="livelearn"):
        settings = devkeys.use_local(
            _settings(redis={"url": "redis://localhost:16379"}, security={"snapshot_key": mine}),
            stack_dir,
            SERVE_NEEDS,
            start=False,
        )
    assert settings.require_secret("snapshot_key") == mine.encode()
    assert settings.security.hash_key is None  # neither needed nor optional here
    assert len(settings.serving.tokens) == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "serving.tokens" in warning and "snapshot_key" not in warning


def test_nothing_missing_means_no_warning(stack_dir: Path, caplog) -> None:
    configured = _settings(
        redis={"url": STACK_REDIS},
        security={"snapshot_key": "k" * 32, "hash_key": "h" * 32},
        serving={"tokens": ["t" * 32]},
    )
    with caplog.at_level(logging.WARNING, logger="livelearn"):
        settings = devkeys.use_local(configured, stack_dir, SERVE_NEEDS, start=False)
    assert settings == configured
    assert caplog.records == [] and not (stack_dir / devkeys.FILE_NAME).exists()


def test_without_a_redis_url_serve_takes_the_running_stack_and_its_keys(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_dir.mkdir()
    (stack_dir / "ports.json").write_text(json.dumps({"kafka_port": 29092, "redis_port": 26379}))
    running = stack.StackInfo("127.0.0.1:29092", "redis://127.0.0.1:26379/0", 101, 102)
    monkeypatch.setattr(stack, "status", lambda state_dir: running)
    settings = devkeys.use_local(_settings(), stack_dir, SERVE_NEEDS, start=False)
    assert settings.redis.url == running.redis_url
    assert settings.kafka.bootstrap_servers == running.bootstrap_servers
    assert settings.require_secret("snapshot_key") and settings.serving.tokens
    # The stack started on other ports: its Redis is on its recorded port, not the default.
    assert stack.is_its_redis("redis://127.0.0.1:26379/0", stack_dir)
    assert not stack.is_its_redis(STACK_REDIS, stack_dir)


@pytest.mark.parametrize(
    "redis",
    [{"url": OTHER_REDIS}, {}],
    ids=["another-redis", "no-redis-and-no-stack-running"],
)
def test_elsewhere_serve_refuses_naming_the_settings_and_the_local_keys(
    stack_dir: Path, demo_keys: dict[str, str], redis: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as refused:
        devkeys.use_local(
            _settings(redis=redis), stack_dir, SERVE_NEEDS, start=False, optional=("hash_key",)
        )
    message = str(refused.value)
    assert message.startswith(
        "security.snapshot_key is not set: set LIVELEARN_SECURITY__SNAPSHOT_KEY to a random "
    )
    assert "serving.tokens is not set: set LIVELEARN_SERVING__TOKENS to a JSON list" in message
    assert "hash_key" not in message  # not needed by every model: the lookup asks for it
    assert "make run" in message and str(stack_dir / devkeys.FILE_NAME) in message
    assert all(value not in message for value in demo_keys.values())
    # Nothing was made or changed: no token was added to the file.
    assert json.loads((stack_dir / devkeys.FILE_NAME).read_text()) == demo_keys


def test_keys_by_key_id_are_a_configured_snapshot_key(stack_dir: Path) -> None:
    configured = _settings(
        redis={"url": OTHER_REDIS},
        security={"snapshot_keys": {"k2": "k" * 32}},
        serving={"tokens": ["t" * 32]},
    )
    settings = devkeys.use_local(configured, stack_dir, SERVE_NEEDS, start=False)
    assert settings == configured
    assert settings.require_keyring().ids == ["k2"]


def test_a_damaged_keys_file_is_named_not_shown(stack_dir: Path) -> None:
    stack_dir.mkdir()
    (stack_dir / devkeys.FILE_NAME).write_text(json.dumps({TOKENS_ENV: "s3cret-not-json"}))
    with pytest.raises(ConfigError, match="is not a development keys file") as refused:
        devkeys.dev_keys(stack_dir)
    assert "s3cret" not in str(refused.value)


# -- through the command line ------------------------------------------------------------


class _FakeLookup:
    """Stands in for the Redis lookup: records the settings serve would use."""

    seen: ClassVar[list[Settings]] = []

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.seen.append(settings)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch, root_logging: None) -> Iterator[list[Settings]]:

    _FakeLookup.seen = []
    monkeypatch.setattr(serving_lookup, "Lookup", _FakeLookup)
    monkeypatch.setattr(serving_api, "create_app", lambda *args: object())
    monkeypatch.setattr(serving_api, "serve", lambda *args: None)
    yield _FakeLookup.seen
    gc.unfreeze()  # serve freezes the objects it has loaded; this process goes on


def _config(tmp_path: Path, **sections: Any) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"log": {"format": "text"}, **sections}))
    return str(path)


def test_livelearn_serve_on_the_local_stack_starts_with_a_warning_and_no_secret_shown(
    tmp_path: Path, stack_dir: Path, demo_keys: dict[str, str], fake_server, capsys
) -> None:
    config = _config(tmp_path, redis={"url": STACK_REDIS})
    assert cli_main.main(["--config", config, "serve"]) == 0
    (settings,) = fake_server
    assert settings.require_secret("snapshot_key") == demo_keys[SNAPSHOT_ENV].encode()
    out, err = capsys.readouterr()
    assert "WARNING" in err and "DEVELOPMENT keys" in err and TOKENS_ENV in err
    assert "http://127.0.0.1:8080/ui" in err
    assert all(secret not in out + err for secret in _secrets(stack_dir))

    # The token the page asks for is the one `livelearn stack token` prints.
    assert cli_main.main(["stack", "token"]) == 0
    printed = capsys.readouterr().out.strip()
    assert [t.get_secret_value() for t in settings.serving.tokens] == [printed]


def test_livelearn_serve_elsewhere_exits_2_saying_what_to_set(
    tmp_path: Path, stack_dir: Path, demo_keys: dict[str, str], fake_server, capsys
) -> None:
    config = _config(tmp_path, redis={"url": OTHER_REDIS})
    assert cli_main.main(["--config", config, "serve"]) == cli_main.EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert err.startswith("livelearn: security.snapshot_key is not set: set ")
    assert "LIVELEARN_SERVING__TOKENS" in err and "dev-keys.json" in err
    assert all(value not in err for value in demo_keys.values())
    assert fake_server == []


def test_the_demo_ends_with_the_command_that_serves_and_the_status_page(
    stack_dir: Path, demo_keys: dict[str, str], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAKELEVEL", "1")  # as under `make run`
    args = cli_main._parser().parse_args(["demo"])
    settings = devkeys.use_local(
        _settings(redis={"url": STACK_REDIS}, serving={"port": 8181}),
        stack_dir,
        ("snapshot_key", "hash_key"),
        start=False,
    )
    cli_main._print_how_to_serve(args, settings)
    out = capsys.readouterr().out
    assert f"serve the model with: {cli_main._this_command()} serve (or: make serve)" in out
    assert "http://127.0.0.1:8181/ui" in out and "stack token" in out
    assert all(secret not in out for secret in _secrets(stack_dir))

    args = cli_main._parser().parse_args(["--config", "my settings.yaml", "demo"])
    elsewhere = _settings(redis={"url": OTHER_REDIS}, serving={"tokens": ["t0ken" * 8]})
    cli_main._print_how_to_serve(args, elsewhere)
    out = capsys.readouterr().out
    assert "--config 'my settings.yaml' serve\n" in out and "make serve" not in out
    assert "one of serving.tokens" in out and "t0ken" not in out
