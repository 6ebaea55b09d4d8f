"""A local Kafka cluster: several KRaft nodes (broker and controller in each) on loopback.

The same pinned jars and Java as the one-broker stack (devtools/stack.py), with a quorum
of every node and Kafka's internal topics replicated on up to three of them. It is what
the replication tests kill brokers in, and what a user starts to try livelearn on a
replicated cluster before a real one.

Node ``n`` (from 1) listens on ``port + 2(n - 1)`` and runs its controller on the port
after. Layout of ``state_dir``::

    cluster.id               the cluster id every node is formatted with
    node-N/data/             node N's log.dirs
    node-N/server.properties node-N/log4j2.properties node-N/server.log node-N/stdout.log
    node-N/kafka.pid

Run ``python -m livelearn.devtools.kafka_cluster up|down|status [STATE_DIR] [--brokers N]
[--port P]``; ``up`` prints the ``LIVELEARN_KAFKA__BOOTSTRAP_SERVERS`` line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from livelearn.devtools import stack
from livelearn.devtools._nodes import LocalNodes
from livelearn.errors import StackError

__all__ = ["KafkaCluster"]

DEFAULT_STATE_DIR = Path(".stack") / "kafka-cluster"
DEFAULT_BROKERS = 3


class KafkaCluster(LocalNodes):
    """Start, stop, kill and restart the nodes of a local KRaft cluster.

    Parameters
    ----------
    state_dir
        Holds each node's data, logs and PID file; the jars stay in the stack's folder.
    port
        Node 1's broker port; node ``n`` listens on ``port + 2(n - 1)``.
    brokers
        How many nodes; Kafka's internal topics are replicated on ``min(3, brokers)``.
    jars_from
        The stack's state folder, whose jars the nodes run (fetched there if missing).
    """

    pid_name = "kafka.pid"

    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        port: int = stack.DEFAULT_KAFKA_PORT,
        brokers: int = DEFAULT_BROKERS,
        jars_from: Path = stack.DEFAULT_STATE_DIR,
    ) -> None:
        if brokers < 1:
            raise StackError(f"a cluster has at least one broker, not {brokers}")
        super().__init__(state_dir, brokers)
        self.port = port
        self._jars_from = jars_from.resolve()

    @property
    def bootstrap_servers(self) -> str:
        """Every node's listener, comma-separated (``kafka.bootstrap_servers``)."""
        return ",".join(f"{stack.HOST}:{self.broker_port(n)}" for n in self.nodes)

    def broker_port(self, node: int) -> int:
        """Node ``node``'s broker port."""
        return self.port + 2 * (node - 1)

    def up(self) -> None:
        """Start every node that does not run, and wait until all are in the cluster.

        Raises
        ------
        StackError
            A port is taken, a tool is missing, or the cluster does not form in time.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            if self.pid(node) is None:
                self.start(node, wait=False)
        self.wait_for(len(self.nodes))

    def start(self, node: int, wait: bool = True) -> int:
        """Start node ``node`` (formatting its storage the first time); its PID."""
        node_dir = self._node_dir(node)
        node_dir.mkdir(parents=True, exist_ok=True)
        port = self.broker_port(node)
        stack._check_free(self.state_dir, port, f"Kafka node {node}", "port")
        stack._check_free(self.state_dir, port + 1, f"Kafka node {node}'s controller", "port")
        libs = stack.kafka_libs(self._jars_from)
        java = stack._java()
        properties = node_dir / "server.properties"
        voters = ",".join(f"{n}@{stack.HOST}:{self.broker_port(n) + 1}" for n in self.nodes)
        properties.write_text(
            stack._server_properties(
                node_dir / "data", port, node, voters, replicas=min(3, len(self.nodes))
            )
        )
        log4j = node_dir / "log4j2.properties"
        log4j.write_text(stack._log4j2_properties(node_dir / "server.log"))
        classpath = [f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
        if not (node_dir / "data" / "meta.properties").is_file():
            stack._format_storage(java, classpath, properties, node_dir / "data", self._id())
        command = [java, *stack._JVM_OPTIONS, *classpath, "kafka.Kafka", str(properties)]
        pid = self._launch(node, command)
        if wait:
            self.wait_for(len(self.running()))
        return pid

    def leader(self, topic: str, partition: int) -> int:
        """The node that leads ``topic``'s partition now."""
        admin = self._admin()
        try:
            for described in admin.describe_topics([topic]):
                for part in described["partitions"]:
                    if part["partition_index"] == partition and part["leader_id"] >= 0:
                        return int(part["leader_id"])
        finally:
            admin.close()
        raise StackError(f"{topic}/{partition} has no leader")

    def wait_in_sync(self, timeout: float = 2 * stack.KAFKA_READY_TIMEOUT_S) -> None:
        """Wait until every partition of every topic has all its replicas in sync: after a
        broker comes back, before another may stop (as a rolling restart does)."""
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while time.monotonic() < deadline:
            try:
                admin = self._admin()
                try:
                    described = admin.describe_topics(admin.list_topics())
                finally:
                    admin.close()
            except (KafkaError, OSError) as error:
                lagging = [repr(error)]
            else:
                lagging = [
                    f"{topic['name']}/{part['partition_index']}"
                    for topic in described
                    for part in topic["partitions"]
                    if len(part["isr_nodes"]) < len(part["replica_nodes"])
                ]
                if not lagging:
                    return
            time.sleep(0.5)
        raise StackError(
            f"partitions of the Kafka cluster in {self.state_dir} still out of sync after "
            f"{timeout:.0f} s: {', '.join(lagging[:10])}"
        )

    def wait_for(self, brokers: int, timeout: float = 2 * stack.KAFKA_READY_TIMEOUT_S) -> None:
        """Wait until ``brokers`` nodes are in the cluster's metadata."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                child = self._children.get(node)
                if child is not None and child.poll() is not None:
                    log = self._node_dir(node) / "stdout.log"
                    raise StackError(
                        f"Kafka node {node} exited (code {child.returncode}) while starting; "
                        f"the end of {log}:\n{stack._tail(log.read_text(errors='replace'))}"
                    )
            if not any(stack._answers(self.broker_port(n)) for n in self.nodes):
                time.sleep(0.3)  # no listener yet: an admin client would wait its timeout
                continue
            try:
                admin = self._admin()
                try:
                    seen = len(admin.describe_cluster()["brokers"])
                finally:
                    admin.close()
            except (KafkaError, OSError) as error:
                last = error
            else:
                if seen >= brokers:
                    return
                last = StackError(f"{seen} of {brokers} brokers in the cluster")
            time.sleep(0.3)
        raise StackError(
            f"the Kafka cluster in {self.state_dir} did not have {brokers} brokers within "
            f"{timeout:.0f} s (last: {last!r}); see {self.state_dir}/node-*/server.log"
        )

    def _admin(self) -> KafkaAdminClient:
        live = [n for n in self.nodes if stack._answers(self.broker_port(n))]
        servers = [f"{stack.HOST}:{self.broker_port(n)}" for n in live or self.nodes]
        return KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=5_000)

    def _id(self) -> str:
        path = self.state_dir / "cluster.id"
        if not path.is_file():
            path.write_text(stack._cluster_id() + "\n")
        return path.read_text().strip()

    def _is_ours(self, node: int, pid: int) -> bool:
        return str(self._node_dir(node)).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m livelearn.devtools.kafka_cluster")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("state_dir", nargs="?", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--brokers", type=int, default=DEFAULT_BROKERS)
    parser.add_argument("--port", type=int, default=stack.DEFAULT_KAFKA_PORT)
    args = parser.parse_args(argv)
    cluster = KafkaCluster(args.state_dir, args.port, args.brokers)
    try:
        if args.action == "up":
            cluster.up()
            print(f"LIVELEARN_KAFKA__BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
        elif args.action == "down":
            stopped = cluster.down()
            print(f"stopped {len(stopped)} Kafka nodes" if stopped else "nothing was running")
        else:
            running = cluster.running()
            if not running:
                print("not running", file=sys.stderr)
                return 3
            print(f"LIVELEARN_KAFKA__BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
            print(f"kafka-cluster: nodes {running} of {list(cluster.nodes)} run", file=sys.stderr)
    except StackError as error:
        print(f"kafka-cluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
