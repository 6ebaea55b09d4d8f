"""The local service stack, without Docker: one Kafka broker and one Redis server on loopback.

Kafka is a pinned Apache Kafka 4.x broker in KRaft mode (broker and controller in one
process), assembled from Maven Central jars by ``scripts/kafka/pom.xml`` and run with the
machine's Java. Redis is the Debian ``redis-server``. Both run detached; their PIDs are
kept in ``state_dir`` so that `down` stops only what `up` started, never anything by name.

Layout of ``state_dir``::

    kafka/libs/              the jars; libs/.complete names the pom they came from
    kafka/data/              the broker's log.dirs, formatted once
    kafka/server.properties  kafka/log4j2.properties
    kafka/server.log         the broker's log; kafka/stdout.log its console
    redis/                   redis-server's working dir; redis/stdout.log its log
    kafka.pid  redis.pid  ports.json  .lock

Run ``python -m livelearn.devtools.stack up|down|status [STATE_DIR]`` for a shell; ``up`` prints the
``NAME=value`` lines that point livelearn's settings at the stack.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from livelearn.devtools import apt
from livelearn.errors import StackError

__all__ = ["StackError", "StackInfo", "down", "is_its_redis", "kafka_libs", "status", "up", "wipe"]

DEFAULT_STATE_DIR = Path(".stack")
DEFAULT_KAFKA_PORT = 19092
DEFAULT_REDIS_PORT = 16379
HOST = "127.0.0.1"

# Room for a busy CI machine, several times slower than an idle one; `up` prints how long
# the broker took ("Kafka is ready after ...").
KAFKA_READY_TIMEOUT_S = 60.0
REDIS_READY_TIMEOUT_S = 15.0
# Kafka's controlled shutdown takes a few seconds; past this the process is killed.
STOP_TIMEOUT_S = 20.0

_POM = Path(__file__).resolve().parent.parent / "scripts" / "kafka" / "pom.xml"
# Kafka's own launcher (bin/kafka-run-class.sh) uses these GC settings; the heap is smaller.
_JVM_OPTIONS = (
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)

Service = Literal["kafka", "redis"]
_SERVICES: tuple[Service, ...] = ("kafka", "redis")

# Processes started by this interpreter. Holding their Popen lets `down` reap them, and keeps
# Popen.__del__ from warning (ResourceWarning) about a child that is meant to outlive it.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class StackInfo:
    """Where the local stack listens, and its processes' PIDs (None: not running)."""

    bootstrap_servers: str
    redis_url: str
    kafka_pid: int | None
    redis_pid: int | None

    def env_lines(self) -> list[str]:
        """``NAME=value`` lines that point livelearn's settings at this stack.

        >>> info = StackInfo("127.0.0.1:19092", "redis://127.0.0.1:16379/0", None, None)
        >>> for line in info.env_lines():
        ...     print(line)
        LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:19092
        LIVELEARN_REDIS__URL=redis://127.0.0.1:16379/0
        """
        return [
            f"LIVELEARN_KAFKA__BOOTSTRAP_SERVERS={self.bootstrap_servers}",
            f"LIVELEARN_REDIS__URL={self.redis_url}",
        ]


def up(
    state_dir: Path = DEFAULT_STATE_DIR,
    kafka_port: int = DEFAULT_KAFKA_PORT,
    redis_port: int = DEFAULT_REDIS_PORT,
) -> StackInfo:
    """Start Kafka and Redis on loopback, or return at once if they already run.

    Parameters
    ----------
    state_dir
        Holds the jars, the data, the logs and the PID files.
    kafka_port
        The broker's PLAINTEXT listener; its KRaft controller listens on ``kafka_port + 1``.
    redis_port
        Redis's port.

    Returns
    -------
    StackInfo
        The addresses to use and the PIDs to stop.

    Raises
    ------
    StackError
        A port is taken by another process, a tool (Java, Maven, redis-server) is
        missing, the jars cannot be fetched, or a server does not come up in time.
    """
    state = state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    with _locked(state):
        running = {name: _our_pid(state, name) for name in _SERVICES}
        recorded = _read_ports(state)
        if recorded is not None and recorded != (kafka_port, redis_port) and any(running.values()):
            raise StackError(
                f"the stack in {state} already runs with Kafka on port {recorded[0]} and Redis "
                f"on port {recorded[1]}, not {kafka_port} and {redis_port}; use those ports, "
                f"or stop it first with down()"
            )
        kafka_pid, redis_pid = running["kafka"], running["redis"]
        info = StackInfo(
            f"{HOST}:{kafka_port}", f"redis://{HOST}:{redis_port}/0", kafka_pid, redis_pid
        )
        if kafka_pid and redis_pid and _answers(kafka_port) and _answers(redis_port):
            return info

        started: list[int] = []
        try:
            if kafka_pid is None:
                _check_free(state, kafka_port, "the Kafka listener", "kafka_port")
                _check_free(state, kafka_port + 1, "the KRaft controller", "kafka_port")
            if redis_pid is None:
                _check_free(state, redis_port, "Redis", "redis_port")
            _write_ports(state, kafka_port, redis_port)
            if kafka_pid is None:
                kafka_pid = _start_kafka(state, kafka_port)
                started.append(kafka_pid)
            if redis_pid is None:
                redis_pid = _start_redis(state, redis_port)
                started.append(redis_pid)
            _wait_redis(state, redis_port, redis_pid)
            _wait_kafka(state, kafka_port, kafka_pid)
        except BaseException:
            _stop(started)
            for name in _SERVICES:
                if _our_pid(state, name) is None:
                    _pid_file(state, name).unlink(missing_ok=True)
            raise
        return StackInfo(info.bootstrap_servers, info.redis_url, kafka_pid, redis_pid)


def down(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop the processes that `up` started in ``state_dir``; return what was stopped.

    Each gets SIGTERM, then SIGKILL if it still runs after `STOP_TIMEOUT_S`.
    """
    state = state_dir.resolve()
    if not state.is_dir():
        return []
    with _locked(state):
        running = {name: pid for name in _SERVICES if (pid := _our_pid(state, name)) is not None}
        _stop(list(running.values()))
        for name in _SERVICES:
            _pid_file(state, name).unlink(missing_ok=True)
        (state / "ports.json").unlink(missing_ok=True)
    return [f"{name} (pid {pid})" for name, pid in running.items()]


def status(state_dir: Path = DEFAULT_STATE_DIR) -> StackInfo | None:
    """The running stack in ``state_dir``, or None when neither server runs.

    A server that is not running has None for its PID.
    """
    state = state_dir.resolve()
    kafka_pid, redis_pid = _our_pid(state, "kafka"), _our_pid(state, "redis")
    ports = _read_ports(state)
    if ports is None or (kafka_pid is None and redis_pid is None):
        return None
    return StackInfo(f"{HOST}:{ports[0]}", f"redis://{HOST}:{ports[1]}/0", kafka_pid, redis_pid)


def is_its_redis(url: str, state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Whether ``url`` names the Redis of the stack in ``state_dir``, running or not: on
    loopback, at the port it was started with (the default one before it ever was).

    >>> never_started = Path("/nonexistent")
    >>> [is_its_redis(url, never_started) for url in ("redis://127.0.0.1:16379/0",
    ...     "redis://localhost:16379", "redis://redis.internal:16379/0", "redis://127.0.0.1:6379")]
    [True, True, False, False]
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    recorded = _read_ports(state_dir.resolve())
    redis_port = recorded[1] if recorded is not None else DEFAULT_REDIS_PORT
    return parts.scheme == "redis" and parts.hostname in (HOST, "localhost") and port == redis_port


def wipe(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Delete the Kafka and Redis data in ``state_dir``; the fetched jars are kept."""
    state = state_dir.resolve()
    if status(state) is not None:
        raise StackError(f"the stack in {state} is running; stop it with down() before wipe()")
    shutil.rmtree(state / "kafka" / "data", ignore_errors=True)
    shutil.rmtree(state / "redis", ignore_errors=True)


# -- Kafka ------------------------------------------------------------------------------


def _start_kafka(state: Path, port: int) -> int:
    kafka_dir = state / "kafka"
    kafka_dir.mkdir(parents=True, exist_ok=True)
    libs = kafka_libs(state)
    java = _java()
    properties = kafka_dir / "server.properties"
    properties.write_text(_server_properties(kafka_dir / "data", port))
    log4j = kafka_dir / "log4j2.properties"
    log4j.write_text(_log4j2_properties(kafka_dir / "server.log"))
    classpath = [f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
    if not (kafka_dir / "data" / "meta.properties").is_file():
        _format_storage(java, classpath, properties, kafka_dir / "data")
    command = [java, *_JVM_OPTIONS, *classpath, "kafka.Kafka", str(properties)]
    return _spawn(state, "kafka", command, kafka_dir / "stdout.log", cwd=kafka_dir)


def kafka_libs(state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    """The folder of Kafka's jars (``state_dir/kafka/libs``), fetched with Maven unless it
    already holds the set that ``scripts/kafka/pom.xml`` names."""
    libs = state_dir / "kafka" / "libs"
    if not _POM.is_file():
        raise StackError(
            f"{_POM} is missing: the local stack runs from a source checkout "
            f"(pip install -e . in the repository)"
        )
    pom = _POM.read_bytes()
    version = re.search(rb"<kafka.version>([^<]+)</kafka.version>", pom)
    wanted = (
        f"kafka {version.group(1).decode() if version else '?'}, "
        f"pom sha256 {hashlib.sha256(pom).hexdigest()[:16]}"
    )
    marker = libs / ".complete"
    if marker.is_file() and marker.read_text().strip() == wanted:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "mvn not found on PATH: the local stack fetches Kafka's jars with Maven; "
            "install it (Debian: apt-get install maven)"
        )
    _progress(f"fetching the Kafka broker jars ({wanted}) from Maven Central into {libs}")
    started = time.monotonic()
    shutil.rmtree(libs, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(_POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            f"mvn could not fetch the Kafka jars (exit {result.returncode}):\n"
            f"{_tail(result.stdout + result.stderr)}"
        )
    marker.write_text(wanted + "\n")
    count = len(list(libs.glob("*.jar")))
    _progress(f"fetched {count} jars in {time.monotonic() - started:.0f} s")
    return libs


def _format_storage(
    java: str, classpath: list[str], properties: Path, data: Path, cluster_id: str | None = None
) -> None:
    _progress(f"formatting Kafka storage in {data}")
    shutil.rmtree(data, ignore_errors=True)  # a half-formatted dir from an earlier failure
    # No --standalone: it conflicts with controller.quorum.voters (a static quorum).
    command = [java, *classpath, "kafka.tools.StorageTool", "format",
               "-t", cluster_id or _cluster_id(), "-c", str(properties)]  # fmt: skip
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(
            f"formatting Kafka storage failed (exit {result.returncode}):\n"
            f"{_tail(result.stdout + result.stderr)}"
        )


def _cluster_id() -> str:
    """A random cluster id as Kafka's ``Uuid.randomUuid``: 16 bytes in unpadded base64url.

    >>> len(_cluster_id())
    22
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka refuses these: they read as options
            return cluster_id


def _server_properties(
    data: Path, port: int, node_id: int = 1, voters: str | None = None, replicas: int = 1
) -> str:
    """A KRaft node's server.properties: broker and controller in one process, the
    controller on ``port + 1``. ``voters`` is the quorum (this node alone by default) and
    ``replicas`` the replication of Kafka's internal topics (the cluster's size, up to 3)."""
    controller = port + 1
    voters = voters or f"{node_id}@{HOST}:{controller}"
    isr = min(2, replicas)
    return f"""\
# Written by devtools/stack.py on each start; edits are overwritten.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}
advertised.listeners=PLAINTEXT://{HOST}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={isr}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={isr}
default.replication.factor={replicas}
# Fewer offsets partitions make the first consumer group join faster (the topic is
# created then).
offsets.topic.num.partitions=5
group.initial.rebalance.delay.ms=0
# A label router killed mid-transaction holds back read_committed readers of the model
# topic until its transaction is aborted: its timeout (10 s), plus this sweep (10 s by default).
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
"""


def _log4j2_properties(log_file: Path) -> str:
    return f"""\
# Written by devtools/stack.py on each start; edits are overwritten.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


def _wait_kafka(state: Path, port: int, pid: int) -> None:
    bootstrap = f"{HOST}:{port}"
    _progress(f"waiting for the Kafka broker on {bootstrap}")
    started = time.monotonic()
    deadline = started + KAFKA_READY_TIMEOUT_S
    configs: dict[str, object] = {"bootstrap_servers": bootstrap, "request_timeout_ms": 5_000}
    if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:  # kafka-python >= 3.0.12
        configs["bootstrap_timeout_ms"] = 5_000
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        _check_alive(state, "kafka", pid)
        if _answers(port):
            try:
                admin = KafkaAdminClient(**configs)
                try:
                    admin.list_topics()
                finally:
                    admin.close()
            except (KafkaError, OSError) as error:
                last_error = error
            else:
                _progress(f"Kafka is ready after {time.monotonic() - started:.1f} s")
                return
        time.sleep(0.2)
    raise StackError(
        f"the Kafka broker (pid {pid}) did not answer on {bootstrap} within "
        f"{KAFKA_READY_TIMEOUT_S:.0f} s (last error: {last_error!r}); see "
        f"{state / 'kafka' / 'server.log'}"
    )


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java not found on PATH or in JAVA_HOME: Kafka 4 needs Java 17 or later; "
            "install it (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return java


# -- Redis ------------------------------------------------------------------------------


def _start_redis(state: Path, port: int) -> int:
    redis_dir = state / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    command = [_redis_server(), "--port", str(port), "--bind", HOST, "--save", "",
               "--appendonly", "no", "--dir", str(redis_dir), "--daemonize", "no"]  # fmt: skip
    return _spawn(state, "redis", command, redis_dir / "stdout.log", cwd=redis_dir)


def _redis_server() -> str:
    """The path of ``redis-server``, installed with apt-get first when missing and root."""
    try:
        return apt.ensure({"redis-server": "redis-server"})["redis-server"]
    except apt.AptError as error:
        raise StackError(f"{error}; or point LIVELEARN_REDIS__URL at a running Redis") from None


def _wait_redis(state: Path, port: int, pid: int) -> None:
    deadline = time.monotonic() + REDIS_READY_TIMEOUT_S
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=1, socket_timeout=1)
    try:
        while time.monotonic() < deadline:
            _check_alive(state, "redis", pid)
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    return
            time.sleep(0.1)
    finally:
        client.close()
    raise StackError(
        f"redis-server (pid {pid}) did not answer PING on {HOST}:{port} within "
        f"{REDIS_READY_TIMEOUT_S:.0f} s; see {state / 'redis' / 'stdout.log'}"
    )


# -- Processes, ports and state files ---------------------------------------------------


def _spawn(state: Path, name: Service, command: list[str], log: Path, cwd: Path) -> int:
    process = _detached(command, log, cwd)
    _children[process.pid] = process
    _pid_file(state, name).write_text(f"{process.pid}\n")
    return process.pid


def _detached(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """``command`` run in ``cwd``, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this interpreter and its terminal's signals
        )


def _stop(pids: list[int]) -> None:
    """SIGTERM each process, wait up to `STOP_TIMEOUT_S`, then SIGKILL what remains."""
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        remaining = [pid for pid in pids if _alive(pid)]
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            time.sleep(0.1)
            remaining = [pid for pid in remaining if _alive(pid)]
        if not remaining:
            return


def _alive(pid: int) -> bool:
    process = _children.get(pid)
    if process is not None:
        if process.poll() is None:
            return True
        del _children[pid]  # reaped
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(pid, 0) until its parent reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _our_pid(state: Path, name: Service) -> int | None:
    """The PID recorded for ``name`` if that process is alive and is still ours."""
    try:
        pid = int(_pid_file(state, name).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc to tell a reused PID from ours
    # Kafka's command line names our server.properties; redis-server rewrites its own title.
    mark = str(state / "kafka").encode() if name == "kafka" else b"redis-server"
    return pid if mark in cmdline else None


def _check_alive(state: Path, name: Service, pid: int) -> None:
    if _alive(pid):
        return
    log = state / name / "stdout.log"
    try:
        lines = _tail(log.read_text(errors="replace"))
    except OSError:
        lines = "(no output)"
    raise StackError(f"{name} (pid {pid}) exited while starting; the end of {log}:\n{lines}")


def _answers(port: int) -> bool:
    """Whether something accepts TCP connections on ``HOST:port``."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _check_free(state: Path, port: int, what: str, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Servers bind with SO_REUSEADDR too, so a port in TIME_WAIT is free for them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise StackError(
                f"port {port} on {HOST}, wanted for {what}, is already taken by a process "
                f"that the stack in {state} did not start; stop that process or choose "
                f"another {setting}"
            ) from None


def _pid_file(state: Path, name: Service) -> Path:
    return state / f"{name}.pid"


def _read_ports(state: Path) -> tuple[int, int] | None:
    try:
        ports = json.loads((state / "ports.json").read_text())
        return int(ports["kafka_port"]), int(ports["redis_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_ports(state: Path, kafka_port: int, redis_port: int) -> None:
    text = json.dumps({"kafka_port": kafka_port, "redis_port": redis_port})
    (state / "ports.json").write_text(text + "\n")


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``state`` so that concurrent ups and downs take turns."""
    with (state / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _progress(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


def _main(argv: list[str]) -> int:
    """``python -m livelearn.devtools.stack up|down|status [STATE_DIR]``."""
    if len(argv) not in (1, 2) or argv[0] not in ("up", "down", "status"):
        print(
            "usage: python -m livelearn.devtools.stack up|down|status [STATE_DIR]", file=sys.stderr
        )
        return 2
    state_dir = Path(argv[1]) if len(argv) == 2 else DEFAULT_STATE_DIR
    try:
        if argv[0] == "up":
            print("\n".join(up(state_dir).env_lines()))
        elif argv[0] == "down":
            stopped = down(state_dir)
            print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        else:
            info = status(state_dir)
            if info is None:
                print("not running", file=sys.stderr)
                return 3  # as `systemctl status` for a stopped unit
            print("\n".join(info.env_lines()))
            print(f"stack: kafka pid {info.kafka_pid}, redis pid {info.redis_pid}", file=sys.stderr)
    except StackError as error:
        print(f"stack: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
