"""devtools.apt, the one place that runs apt-get: it waits for another apt-get's locks,
installs only what is missing, and where it cannot, says the one command to run. Driven
here by a fake apt-get that logs its arguments."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from livelearn.devtools import apt, engine

FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$FAKE_APT_LOG"
case " $* " in
*" update "*)
    n=$(/bin/cat "$FAKE_APT_STATE" 2>/dev/null || echo 0)
    if [ "$n" -lt "${FAKE_APT_LOCKED_UPDATES:-0}" ]; then
        echo $((n + 1)) > "$FAKE_APT_STATE"
        echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 7 (apt-get)" >&2
        exit 100
    fi
    exit 0;;
*" install "*)
    if [ -n "$FAKE_APT_FAIL" ]; then
        echo "E: Unable to locate package $FAKE_APT_FAIL" >&2
        exit 100
    fi
    for command in $FAKE_APT_PROVIDES; do
        printf '#!/bin/sh\\n' > "$FAKE_BIN/$command"
        /bin/chmod +x "$FAKE_BIN/$command"
    done
    exit 0;;
esac
exit 64
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only a fake apt-get; returns the file where it logs each call's arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(FAKE_APT_GET)
    script.chmod(0o755)
    log = tmp_path / "apt-get.log"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_BIN", str(bin_dir))
    monkeypatch.setenv("FAKE_APT_LOG", str(log))
    monkeypatch.setenv("FAKE_APT_STATE", str(tmp_path / "updates"))
    monkeypatch.setattr(apt, "LOCK_RETRY_S", 0.01)
    return log


def _as_root(monkeypatch: pytest.MonkeyPatch, root: bool = True) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)


def _calls(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_as_root_it_waits_for_the_locks_then_installs_only_whats_missing(
    fake_apt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_root(monkeypatch)
    (fake_apt.parent / "bin" / "present").write_text("#!/bin/sh\n")
    (fake_apt.parent / "bin" / "present").chmod(0o755)
    monkeypatch.setenv("FAKE_APT_LOCKED_UPDATES", "2")  # another apt-get updates meanwhile
    monkeypatch.setenv("FAKE_APT_PROVIDES", "browser driver")
    found = apt.ensure({"browser": "browser-pkg", "driver": "driver-pkg", "present": "p-pkg"})
    assert found == {name: shutil.which(name) for name in ("browser", "driver", "present")}
    wait = ["-o", f"DPkg::Lock::Timeout={apt.LOCK_TIMEOUT_S}"]
    assert apt.LOCK_TIMEOUT_S == 600
    update = [*wait, "update", "-qq"]
    install = [*wait, "install", "-y", "-qq", "--no-install-recommends", "browser-pkg"]
    assert _calls(fake_apt) == [update, update, update, [*install, "driver-pkg"]]


def test_nothing_missing_runs_no_apt_get(fake_apt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_root(monkeypatch)
    assert apt.ensure({"apt-get": "apt"}) == {"apt-get": str(fake_apt.parent / "bin" / "apt-get")}
    assert _calls(fake_apt) == []


def test_not_root_it_says_the_one_command_to_run(
    fake_apt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_root(monkeypatch, root=False)
    with pytest.raises(apt.AptError) as error:
        apt.ensure({"chromium": "chromium", "chromedriver": "chromium-driver"})
    assert str(error.value) == (
        "chromium, chromedriver not found on PATH; install: "
        "sudo apt-get install chromium chromium-driver"
    )
    assert _calls(fake_apt) == []


def test_a_failed_install_shows_apt_gets_words_and_the_command(
    fake_apt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_root(monkeypatch)
    monkeypatch.setenv("FAKE_APT_FAIL", "chromium-driver")
    with pytest.raises(apt.AptError) as error:
        apt.ensure({"chromium": "chromium", "chromedriver": "chromium-driver"})
    message = str(error.value)
    assert "E: Unable to locate package chromium-driver" in message
    assert message.endswith("install them by hand: sudo apt-get install chromium chromium-driver")


def test_the_engine_installs_through_it_and_passes_its_advice_on(
    fake_apt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_root(monkeypatch, root=False)
    with pytest.raises(engine.EngineError) as error:
        engine._dockerd()
    assert "sudo apt-get install docker.io debootstrap" in str(error.value)
    assert "DOCKER_HOST" in str(error.value)
    _as_root(monkeypatch)
    monkeypatch.setenv("FAKE_APT_PROVIDES", "dockerd debootstrap")
    assert engine._dockerd() == str(fake_apt.parent / "bin" / "dockerd")
    assert _calls(fake_apt)[-1][-2:] == ["docker.io", "debootstrap"]
