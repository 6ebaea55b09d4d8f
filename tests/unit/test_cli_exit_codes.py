"""Each documented exit code of the command line, and a bug's traceback (README, Exit codes)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from livelearn import DeadLetterError, SnapshotRefused, StaleEpochError
from livelearn.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI may export LIVELEARN_* variables; these tests choose their own settings."""
    import os

    for name in list(os.environ):
        if name.startswith("LIVELEARN_"):
            monkeypatch.delenv(name)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, **sections: Any) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def _raising(error: BaseException) -> Any:
    def command(args: Any) -> int:
        raise error

    return command


def test_a_bad_setting_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, kafka={"auto_offset_reset": "sometimes"})
    assert cli_main.main(["--config", config, "models", "list"]) == cli_main.EXIT_BAD_SETTINGS == 2
    assert "kafka.auto_offset_reset" in capsys.readouterr().err


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    assert cli_main.main(["--config", str(tmp_path / "none.yaml"), "models", "list"]) == 2


def test_redis_that_does_not_answer_exits_69(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, redis={"url": f"redis://127.0.0.1:{_closed_port()}/0"})
    assert cli_main.main(["--config", config, "models", "list"]) == cli_main.EXIT_UNAVAILABLE
    assert cli_main.EXIT_UNAVAILABLE == 69
    assert "does not answer" in capsys.readouterr().err


def test_an_undeliverable_dead_letter_exits_69(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lost = DeadLetterError([("payments", 0, 7)], ["KafkaTimeoutError"])
    monkeypatch.setattr(cli_main, "_cmd_stack", _raising(lost))
    assert cli_main.main(["stack", "status"]) == cli_main.EXIT_UNAVAILABLE
    assert "not delivered" in capsys.readouterr().err


def test_a_dead_letter_setting_out_of_range_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, dead_letters={"max_request_size": 1000})
    assert cli_main.main(["--config", config, "models", "list"]) == cli_main.EXIT_BAD_SETTINGS
    assert "dead_letters.max_request_size" in capsys.readouterr().err


def test_nothing_to_show_exits_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli_main, "STACK_DIR", tmp_path)
    assert cli_main.main(["stack", "status"]) == cli_main.EXIT_NOT_FOUND == 3


def test_an_unusable_snapshot_exits_65(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "_cmd_stack", _raising(SnapshotRefused("bad signature")))
    assert cli_main.main(["stack", "status"]) == cli_main.EXIT_BAD_DATA == 65


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), StaleEpochError("m/t/0", 1, 2)],
    ids=["a-bug", "an-error-not-expected-here"],
)
def test_anything_else_propagates(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    monkeypatch.setattr(cli_main, "_cmd_stack", _raising(error))
    with pytest.raises(type(error)):
        cli_main.main(["stack", "status"])


def test_a_bug_exits_1_with_its_traceback() -> None:
    script = (
        "import sys, livelearn.cli.main as m\n"
        "def boom(args): raise RuntimeError('a bug')\n"
        "m._cmd_stack = boom\n"
        "sys.exit(m.main(['stack', 'status']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr
