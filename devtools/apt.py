"""Debian packages that the developer tools and the tests need, installed when missing.

The one place that runs ``apt-get``: `ensure` returns the path of each wanted command and,
when some are missing and this process is root, first installs their Debian packages
(``apt-get update``, then ``apt-get install -y --no-install-recommends``), waiting for
another apt-get that holds the package manager's locks instead of failing at once. Where
it cannot install (not root, no apt-get, apt-get failed), `AptError` says the one command
to run. ``python -m livelearn.devtools.apt COMMAND=PACKAGE ...`` does the same from a shell.

Needs only the standard library, so that ``.ci/run`` can use it with the system Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

__all__ = ["LOCK_TIMEOUT_S", "AptError", "advice", "ensure", "install"]

# How long apt-get waits for a lock another apt-get holds: unattended-upgrades on a machine
# that has just booted, or another test session installing chromium or docker.io (hundreds
# of MB: minutes on a slow mirror). Ten minutes covers those; a holder that keeps the lock
# longer is likely stuck, and apt-get's error then names its process.
LOCK_TIMEOUT_S = 600
# apt-get update takes the package lists' lock without waiting, whatever the option says
# (apt 2.6), so it is retried at this interval until LOCK_TIMEOUT_S has passed.
LOCK_RETRY_S = 2.0


class AptError(RuntimeError):
    """The commands are missing and cannot be installed here; the message says what to run."""


def advice(packages: Sequence[str]) -> str:
    """The command a user runs to install ``packages``.

    >>> advice(["chromium", "chromium-driver"])
    'sudo apt-get install chromium chromium-driver'
    """
    return f"sudo apt-get install {' '.join(packages)}"


def ensure(wanted: Mapping[str, str]) -> dict[str, str]:
    """The path of each command in ``wanted``, installing the missing ones first.

    Parameters
    ----------
    wanted
        Each command, with the Debian package that provides it, e.g.
        ``{"chromedriver": "chromium-driver"}``.

    Raises
    ------
    AptError
        A command is missing and cannot be installed: not root, no apt-get, or apt-get
        failed. The message names the commands and the command to run.
    """
    missing = {command: package for command, package in wanted.items() if not shutil.which(command)}
    if missing:
        packages = list(dict.fromkeys(missing.values()))
        names = ", ".join(missing)
        if os.geteuid() != 0:
            raise AptError(f"{names} not found on PATH; install: {advice(packages)}")
        if shutil.which("apt-get") is None:
            raise AptError(
                f"{names} not found on PATH, and there is no apt-get to install it: install "
                f"the package(s) Debian calls {', '.join(packages)}"
            )
        install(packages)
    paths = {command: shutil.which(command) for command in wanted}
    absent = [command for command, path in paths.items() if path is None]
    if absent:
        raise AptError(
            f"apt-get installed {', '.join(missing.values())}, yet {', '.join(absent)} is "
            f"still not on PATH (PATH={os.environ.get('PATH', '')})"
        )
    return {command: path for command, path in paths.items() if path is not None}


def install(packages: Sequence[str]) -> None:
    """``apt-get update``, then ``apt-get install -y --no-install-recommends packages``, as
    root, each waiting up to `LOCK_TIMEOUT_S` for another apt-get's lock.

    Raises
    ------
    AptError
        apt-get install failed: its output's end, and the command to run by hand.
    """
    # C messages: the lock error is recognised by its text.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    wait = ["-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT_S}"]
    _progress(
        f"installing {', '.join(packages)} with apt-get (waiting up to {LOCK_TIMEOUT_S} s "
        "for another apt-get to finish)"
    )
    started = time.monotonic()
    deadline = started + LOCK_TIMEOUT_S
    update = _run(["apt-get", *wait, "update", "-qq"], env)
    while _locked(update) and time.monotonic() < deadline:
        time.sleep(LOCK_RETRY_S)
        update = _run(["apt-get", *wait, "update", "-qq"], env)
    # A failed update is not the end: the lists already here may have the packages.
    command = ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages]
    result = _run(command, env)
    if result.returncode != 0:
        output = _tail(update) + "\n" if update.returncode != 0 else ""
        raise AptError(
            f"apt-get install {' '.join(packages)} failed (exit {result.returncode}):\n"
            f"{output}{_tail(result)}\n"
            f"install them by hand: {advice(packages)}"
        )
    _progress(f"installed {', '.join(packages)} in {time.monotonic() - started:.0f} s")


def _locked(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "Could not get lock" in result.stdout + result.stderr


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )


def _tail(result: subprocess.CompletedProcess[str], lines: int = 20) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def _progress(message: str) -> None:
    print(f"apt: {message}", file=sys.stderr, flush=True)


def _main(argv: list[str]) -> int:
    """``python -m livelearn.devtools.apt COMMAND=PACKAGE ...``: print each command's path."""
    pairs = [arg.partition("=") for arg in argv]
    wanted = {command: package for command, _, package in pairs}
    if not wanted or not all(command and package for command, package in wanted.items()):
        print("usage: python -m livelearn.devtools.apt COMMAND=PACKAGE ...", file=sys.stderr)
        return 2
    try:
        for command, path in ensure(wanted).items():
            print(f"{command}={path}")
    except AptError as error:
        print(f"apt: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
