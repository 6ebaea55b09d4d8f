"""A Docker engine for the tests: Debian's ``dockerd``, started with its default flags
only when no engine answers, and stopped only by whoever started it.

The engine's PID and log are kept in ``state_dir`` (``.stack/docker/`` by default), so
``down`` stops the ``dockerd`` that ``up`` started and never one found running. Run
``python -m livelearn.devtools.engine up|down|status [STATE_DIR]``: ``up`` prints ``started`` or
``running``, so a caller knows whether to stop it afterwards.

Needs only the standard library, so that ``.ci/run`` can use it with the system Python.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from livelearn.devtools import apt

__all__ = ["EngineError", "answers", "down", "status", "up"]

DEFAULT_STATE_DIR = Path(".stack") / "docker"
SOCKET = Path("/var/run/docker.sock")
# dockerd on two cores answers within a few seconds; a first start also sets up its
# storage and bridge network, and a loaded CI machine may be several times slower.
START_TIMEOUT_S = 60.0
# dockerd stops its containers (10 s grace each, in parallel) and then containerd.
STOP_TIMEOUT_S = 40.0
# What the engine needs from Debian, by command: dockerd (docker.io, which brings
# containerd, runc and iptables) and debootstrap, which makes the local base image
# (`devtools.images`).
COMMANDS = {"dockerd": "docker.io", "debootstrap": "debootstrap"}

# The dockerd started by this interpreter. Holding its Popen lets `down` reap it, and keeps
# Popen.__del__ from warning (ResourceWarning) about a child that is meant to outlive it.
_children: dict[int, subprocess.Popen[bytes]] = {}


class EngineError(RuntimeError):
    """The Docker engine cannot be started or stopped."""


def answers(timeout: float = 3.0) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` on ``$DOCKER_HOST`` or the default socket."""
    host = os.environ.get("DOCKER_HOST", "")
    try:
        if host.startswith("tcp://"):
            address = host.removeprefix("tcp://").rstrip("/")
            name, _, port = address.rpartition(":")
            conn: http.client.HTTPConnection = http.client.HTTPConnection(
                name, int(port), timeout=timeout
            )
        else:
            path = host.removeprefix("unix://") if host.startswith("unix://") else str(SOCKET)
            conn = _UnixHTTPConnection(path, timeout)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return False


def status(state_dir: Path = DEFAULT_STATE_DIR) -> int | None:
    """The PID of the ``dockerd`` that `up` started in ``state_dir``, or None."""
    pid = _read_pid(state_dir)
    return pid if pid is not None and _is_dockerd(pid) else None


def up(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Make sure an engine answers; start ``dockerd`` if none does.

    Returns
    -------
    True if this call started the engine (stop it with `down`), False if one answered.

    Raises
    ------
    EngineError
        ``dockerd`` is missing and cannot be installed, or it did not answer in time.
    """
    if answers():
        return False
    if os.environ.get("DOCKER_HOST", "").startswith("tcp://"):
        raise EngineError(
            f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer; start that engine, "
            f"or unset DOCKER_HOST to have a local dockerd started"
        )
    dockerd = _dockerd()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "dockerd.log"
    _progress(f"no Docker engine answers; starting {dockerd} (log: {log})")
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this interpreter, as a service does
        )
    _children[process.pid] = process
    (state_dir / "dockerd.pid").write_text(f"{process.pid}\n")
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise EngineError(
                f"dockerd exited with code {process.returncode} while starting:\n{_tail(log)}"
            )
        if answers(timeout=1.0):
            _progress(f"Docker engine up in {time.monotonic() - started:.1f} s")
            return True
        time.sleep(0.2)
    down(state_dir)
    raise EngineError(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def down(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Stop the ``dockerd`` that `up` started in ``state_dir``; True if there was one."""
    pid = status(state_dir)
    (state_dir / "dockerd.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    child = _children.pop(pid, None)
    if child is not None:  # started by this interpreter: wait for it, leaving no zombie
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _progress(f"dockerd (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
            child.kill()
            child.wait()
        return True
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _is_dockerd(pid):
        _reap(pid)
        time.sleep(0.2)
    if _is_dockerd(pid):
        _progress(f"dockerd (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    return True


def _dockerd() -> str:
    """The path of ``dockerd``, with Debian's packages installed first when missing and root."""
    try:
        return apt.ensure(COMMANDS)["dockerd"]
    except apt.AptError as error:
        raise EngineError(f"{error} (or set DOCKER_HOST to an engine that answers)") from None


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket, as the Docker API speaks it."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "dockerd.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _is_dockerd(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) ``dockerd``: a PID file can outlive its process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition(") ")
    return name.endswith("(dockerd") and not rest.startswith("Z")


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is this interpreter's child (no zombie left)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _progress(message: str) -> None:
    print(f"engine: {message}", file=sys.stderr, flush=True)


def _main(argv: list[str]) -> int:
    """``python -m livelearn.devtools.engine up|down|status [STATE_DIR]``."""
    if len(argv) not in (1, 2) or argv[0] not in ("up", "down", "status"):
        print(
            "usage: python -m livelearn.devtools.engine up|down|status [STATE_DIR]", file=sys.stderr
        )
        return 2
    state_dir = Path(argv[1]) if len(argv) == 2 else DEFAULT_STATE_DIR
    try:
        if argv[0] == "up":
            print("started" if up(state_dir) else "running")
        elif argv[0] == "down":
            print("stopped" if down(state_dir) else "not started here")
        else:
            pid = status(state_dir)
            print(f"started here, pid {pid}" if pid else "running" if answers() else "down")
            return 0 if answers() else 3
    except EngineError as error:
        print(f"engine: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
