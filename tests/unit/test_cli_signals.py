"""A stop right after launch: the command line installs its handlers before anything else,
so a SIGTERM that lands before any command has started ends it with 0, not 143."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_sigterm_as_soon_as_python_runs_our_code_exits_zero(tmp_path: Path) -> None:
    config = tmp_path / "livelearn.yaml"
    config.write_text("models: []\n")
    launched = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "livelearn.cli.main", "--config", str(config), "worker"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = launched + 30
        while not _catches_sigterm(proc.pid):  # the first moment a handler can exist
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        caught_after = time.monotonic() - launched
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert out == b"", out  # no traceback, no half-started command
    print(f"SIGTERM handled from {caught_after * 1000:.0f} ms after launch")
