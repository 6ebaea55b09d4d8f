"""A local Redis Cluster: three masters and three replicas of Debian's ``redis-server``.

Each node runs ``redis-server --cluster-enabled yes`` on loopback with a short
``cluster-node-timeout``, so that a killed master's replica is promoted within seconds;
``up`` joins the nodes with ``redis-cli --cluster create ... --cluster-replicas 1`` the first
time and waits until ``CLUSTER INFO`` says the cluster is ok. A node killed here and
started again rejoins from its ``nodes.conf`` (as a replica of whoever took its slots).

Node ``n`` (from 1) serves clients on ``port + n - 1`` and talks to the other nodes on its
cluster bus, ``port + nodes + n - 1``. Layout of ``state_dir``::

    node-N/nodes.conf   the node's view of the cluster (Redis writes it)
    node-N/stdout.log   its log
    node-N/redis.pid

Run ``python -m livelearn.devtools.redis_cluster up|down|status [STATE_DIR] [--port P]``;
``up`` prints the ``LIVELEARN_REDIS__URL`` line (``redis+cluster://...``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from livelearn.devtools import apt, stack
from livelearn.devtools._nodes import LocalNodes
from livelearn.errors import StackError

__all__ = ["RedisCluster"]

DEFAULT_STATE_DIR = Path(".stack") / "redis-cluster"
DEFAULT_PORT = 17000
MASTERS = 3
# How long a master may be silent before the others mark it failed and its replica takes
# over; short, so that a test's failover takes seconds (Redis' default is 15 s).
NODE_TIMEOUT_MS = 2000
READY_TIMEOUT_S = 60.0


class RedisCluster(LocalNodes):
    """Start, stop, kill and restart the nodes of a local Redis Cluster.

    Parameters
    ----------
    state_dir
        Holds each node's ``nodes.conf``, log and PID file.
    port
        Node 1's client port; node ``n`` listens on ``port + n - 1``.
    masters
        How many masters; each gets one replica, so the cluster has twice as many nodes.
    """

    pid_name = "redis.pid"

    def __init__(
        self, state_dir: Path = DEFAULT_STATE_DIR, port: int = DEFAULT_PORT, masters: int = MASTERS
    ) -> None:
        if masters < 3:
            raise StackError(f"Redis Cluster needs at least 3 masters, not {masters}")
        super().__init__(state_dir, 2 * masters)
        self.port = port
        self._masters = masters

    @property
    def url(self) -> str:
        """The ``redis.url`` of the cluster: every node as a seed."""
        seeds = ",".join(f"{stack.HOST}:{self.node_port(n)}" for n in self.nodes)
        return f"redis+cluster://{seeds}"

    def node_port(self, node: int) -> int:
        """Node ``node``'s client port."""
        return self.port + node - 1

    def up(self) -> None:
        """Start every node that does not run, form the cluster the first time, and wait
        until it serves every slot.

        Raises
        ------
        StackError
            A port is taken, ``redis-server`` is missing, or the cluster does not form.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            if self.pid(node) is None:
                self.start(node, wait=False)
        for node in self.nodes:
            self._wait_answers(node)
        if not self._formed():
            self._create()
        self.wait_ok()

    def start(self, node: int, wait: bool = True) -> int:
        """Start node ``node``; its PID. With ``wait``, until it answers and the cluster
        says ok."""
        node_dir = self._node_dir(node)
        node_dir.mkdir(parents=True, exist_ok=True)
        port = self.node_port(node)
        bus = port + len(self.nodes)
        stack._check_free(self.state_dir, port, f"Redis node {node}", "port")
        stack._check_free(self.state_dir, bus, f"Redis node {node}'s cluster bus", "port")
        command = [stack._redis_server(), "--port", str(port), "--bind", stack.HOST,
                   "--cluster-enabled", "yes", "--cluster-port", str(bus),
                   "--cluster-config-file", str(node_dir / "nodes.conf"),
                   "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                   "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                   "--daemonize", "no"]  # fmt: skip
        pid = self._launch(node, command)
        if wait:
            self._wait_answers(node)
            self.wait_ok()
        return pid

    def master_of(self, key: str) -> int:
        """The node that serves ``key``'s slot now, as a running node sees the cluster."""
        slot = int(_command(self._client(self._any_running()), "CLUSTER", "KEYSLOT", key))
        return self._owner(slot)

    def wait_promoted(self, key: str, was: int, timeout: float = READY_TIMEOUT_S) -> int:
        """Wait until a node other than ``was`` serves ``key``'s slot and the cluster is ok
        again (a replica promoted after its master died); that node."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                slot = int(_command(self._client(self._any_running()), "CLUSTER", "KEYSLOT", key))
                owner = self._owner(slot)
                if owner != was and self._ok(owner):
                    return owner
                last = f"slot {slot} still on node {owner}"
            except (redis.RedisError, StackError) as error:
                last = error
            time.sleep(0.2)
        raise StackError(f"no replica took over {key!r} from node {was} in {timeout:.0f} s: {last}")

    def wait_ok(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every running node says ``cluster_state:ok`` and sees every master."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                if all(self._ok(node) for node in self.running()):
                    return
                last = "cluster_state not ok on every node"
            except redis.RedisError as error:
                last = error
            time.sleep(0.2)
        raise StackError(
            f"the Redis cluster in {self.state_dir} was not ok within {timeout:.0f} s "
            f"(last: {last}); see {self.state_dir}/node-*/stdout.log"
        )

    def _ok(self, node: int) -> bool:
        """Whether ``node`` says the cluster is ok and, if it is a replica, that its link to
        its master is up (synced: a write can be acknowledged by it)."""
        client = self._client(node)
        info = _command(client, "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        replication: dict[str, Any] = client.info("replication")
        return (
            fields.get("cluster_state") == "ok"
            and int(fields.get("cluster_slots_ok", 0)) == 16384
            and int(fields.get("cluster_size", 0)) >= self._masters
            and (
                replication.get("role") != "slave" or replication.get("master_link_status") == "up"
            )
        )

    def _owner(self, slot: int) -> int:
        """The node serving ``slot``, from a running node's ``CLUSTER SLOTS``."""
        ranges = _command(self._client(self._any_running()), "CLUSTER", "SLOTS")
        for row in ranges:
            if int(row[0]) <= slot <= int(row[1]):
                port = int(row[2][1])
                return port - self.port + 1
        raise StackError(f"no node serves slot {slot}")

    def _formed(self) -> bool:
        info = _command(self._client(1), "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_slots_assigned:16384" in text

    def _create(self) -> None:
        try:
            cli = apt.ensure({"redis-cli": "redis-tools"})["redis-cli"]
        except apt.AptError as error:
            raise StackError(str(error)) from None
        seeds = [f"{stack.HOST}:{self.node_port(n)}" for n in self.nodes]
        done = subprocess.run(
            [cli, "--cluster", "create", *seeds, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(
                f"redis-cli --cluster create failed (exit {done.returncode}):\n"
                f"{stack._tail(done.stdout + done.stderr)}"
            )

    def _wait_answers(self, node: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            child = self._children.get(node)
            if child is not None and child.poll() is not None:
                log = self._node_dir(node) / "stdout.log"
                raise StackError(
                    f"Redis node {node} exited (code {child.returncode}) while starting; "
                    f"the end of {log}:\n{stack._tail(log.read_text(errors='replace'))}"
                )
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if self._client(node).ping():
                    return
            time.sleep(0.1)
        raise StackError(f"Redis node {node} did not answer within {READY_TIMEOUT_S:.0f} s")

    def _client(self, node: int) -> redis.Redis:
        return redis.Redis(
            host=stack.HOST, port=self.node_port(node), socket_connect_timeout=1, socket_timeout=2
        )

    def _is_ours(self, node: int, pid: int) -> bool:
        # redis-server rewrites its command line (its process title); its folder stays.
        return os.readlink(f"/proc/{pid}/cwd") == str(self._node_dir(node))

    def _any_running(self) -> int:
        for node in self.running():
            if stack._answers(self.node_port(node)):
                return node
        raise StackError(f"no node of the Redis cluster in {self.state_dir} answers")


def _command(client: redis.Redis, *args: str) -> Any:
    """A CLUSTER command's answer (redis-py leaves ``execute_command`` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m livelearn.devtools.redis_cluster")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("state_dir", nargs="?", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    cluster = RedisCluster(args.state_dir, args.port)
    try:
        if args.action == "up":
            cluster.up()
            print(f"LIVELEARN_REDIS__URL={cluster.url}")
        elif args.action == "down":
            stopped = cluster.down()
            print(f"stopped {len(stopped)} Redis nodes" if stopped else "nothing was running")
        else:
            running = cluster.running()
            if not running:
                print("not running", file=sys.stderr)
                return 3
            print(f"LIVELEARN_REDIS__URL={cluster.url}")
            print(f"redis-cluster: nodes {running} of {list(cluster.nodes)} run", file=sys.stderr)
    except StackError as error:
        print(f"redis-cluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
