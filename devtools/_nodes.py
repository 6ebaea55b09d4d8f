"""The processes of a local cluster's nodes: started here, each with a PID file in its own
folder, and stopped, killed and reaped (devtools/kafka_cluster.py, devtools/redis_cluster.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from livelearn.devtools import stack

__all__ = ["LocalNodes"]


class LocalNodes:
    """Nodes 1 to ``count`` of a local cluster, node ``n`` in ``state_dir/node-n``.

    A subclass names the PID file (``pid_name``) and says how to tell its node from a
    process that took a reused PID (`_is_ours`).

    Parameters
    ----------
    state_dir
        Holds a folder of each node's, with its PID file and ``stdout.log``.
    count
        How many nodes.
    """

    pid_name = "node.pid"

    def __init__(self, state_dir: Path, count: int) -> None:
        self.state_dir = state_dir.resolve()
        self.nodes = tuple(range(1, count + 1))
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def down(self) -> list[int]:
        """Stop every node (SIGTERM, then SIGKILL); the PIDs that were running."""
        pids = [pid for node in self.nodes if (pid := self.pid(node)) is not None]
        stack._stop(pids)
        for child in self._children.values():  # reap the nodes started here
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        self._children.clear()
        for node in self.nodes:
            self._pid_file(node).unlink(missing_ok=True)
        return pids

    def stop(self, node: int) -> None:
        """Stop node ``node`` as an operator would (SIGTERM: a controlled shutdown)."""
        self._end(node, signal.SIGTERM)

    def kill(self, node: int) -> None:
        """Kill node ``node`` at once (SIGKILL): a crashed server."""
        self._end(node, signal.SIGKILL)

    def pid(self, node: int) -> int | None:
        """Node ``node``'s PID if it runs and is ours."""
        try:
            pid = int(self._pid_file(node).read_text().strip())
        except (OSError, ValueError):
            return None
        child = self._children.get(node)
        if child is not None and child.pid == pid and child.poll() is not None:
            return None
        if not stack._alive(pid):
            return None
        with contextlib.suppress(OSError):  # unreadable: taken as ours
            if not self._is_ours(node, pid):
                return None  # a reused PID
        return pid

    def running(self) -> list[int]:
        """The nodes that run."""
        return [node for node in self.nodes if self.pid(node) is not None]

    def _launch(self, node: int, command: list[str]) -> int:
        """Run ``command`` as node ``node``, in its folder, its output in ``stdout.log``;
        its PID."""
        node_dir = self._node_dir(node)
        process = stack._detached(command, node_dir / "stdout.log", node_dir)
        self._children[node] = process
        self._pid_file(node).write_text(f"{process.pid}\n")
        return process.pid

    def _is_ours(self, node: int, pid: int) -> bool:
        """Whether the process ``pid`` is node ``node``'s (and not another that took its
        PID); may raise OSError when /proc does not tell."""
        raise NotImplementedError

    def _end(self, node: int, sig: signal.Signals) -> None:
        pid = self.pid(node)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        child = self._children.pop(node, None)
        if child is not None and child.pid == pid:  # ours: wait for it, leaving no zombie
            try:
                child.wait(timeout=stack.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        else:
            stack._stop([pid])
        self._pid_file(node).unlink(missing_ok=True)

    def _node_dir(self, node: int) -> Path:
        return self.state_dir / f"node-{node}"

    def _pid_file(self, node: int) -> Path:
        return self._node_dir(node) / self.pid_name
