"""``redis+sentinel://`` on real servers: a master, its replica and one Sentinel of the
test's own. The store works through Sentinel, waits for the replica by default, and after
the master is killed finds the promoted replica again."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from livelearn.errors import NotReplicated, ServiceUnavailable
from livelearn.settings import Settings
from livelearn.store.checkpoints import ShardId
from livelearn.store.connection import checkpoint_store, redis_client
from tests.integration.conftest import free_port_run, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """Ports master, replica, sentinel in a row; the three processes."""
    port = free_port_run(3)
    # --dir: a replica's full sync writes an RDB file there.
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    procs = []
    log = (tmp_path / "redis.log").open("ab")
    procs.append(
        subprocess.Popen(["redis-server", "--port", str(port), *common], stdout=log, stderr=log)
    )
    procs.append(
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port + 1),
                "--replicaof",
                "127.0.0.1",
                str(port),
                *common,
            ],
            stdout=log,
            stderr=log,
        )
    )
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port + 2}\nbind 127.0.0.1\n"
        f"sentinel monitor ll 127.0.0.1 {port} 1\n"
        "sentinel down-after-milliseconds ll 1000\nsentinel failover-timeout ll 5000\n"
    )
    procs.append(
        subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=log, stderr=log)
    )
    try:
        replica = redis.Redis(port=port + 1)
        wait_for(
            lambda: _quiet(lambda: replica.info("replication").get("master_link_status") == "up"),
            30,
            "the replica to sync",
        )
        replica.close()
        # Sentinel learns of replicas from the master's INFO, every 10 s: a master killed
        # before that has no replica Sentinel knows to promote ("failover-abort-no-good-slave").
        sentinel = redis.Redis(port=port + 2, decode_responses=True)
        wait_for(
            lambda: _quiet(lambda: _known_replicas(sentinel) == 1),
            30,
            "Sentinel to know the replica",
        )
        sentinel.close()
        yield port, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _known_replicas(sentinel: redis.Redis) -> int:
    """Replicas of ``ll`` that Sentinel knows and sees up."""
    replicas = sentinel.sentinel_slaves("ll")
    return sum(
        1 for r in replicas if not {"s_down", "o_down", "disconnected"} & set(r["flags"].split(","))
    )


def _quiet(call) -> bool:
    try:
        return bool(call())
    except redis.RedisError:
        return False


def test_the_store_through_sentinel_follows_a_failover(sentinel_set, unique_name) -> None:
    port, procs = sentinel_set
    settings = Settings(
        redis={
            "url": f"redis+sentinel://127.0.0.1:{port + 2}/ll",
            "key_prefix": unique_name,
            "socket_timeout_s": 1,
        }
    )
    store = checkpoint_store(settings, redis_client(settings))
    shard = ShardId("m", "t", 0)
    epoch, _ = store.claim(shard)
    assert store.wait_replicas() == 1  # the master has a replica: each write waits for it
    assert store.save(shard, epoch, b"one", 10, {}, 1) == 1

    procs[0].kill()  # the master dies; Sentinel promotes the replica
    procs[0].wait(timeout=10)

    def written() -> bool:
        try:
            return store.save(shard, epoch, b"two", 20, {}, 2) == 2
        except NotReplicated:
            return True  # written on the promoted replica, which has no replica of its own
        except ServiceUnavailable:
            time.sleep(0.2)
            return False

    wait_for(written, 60, "a write through Sentinel to the promoted replica")
    loaded = store.load(shard)
    assert loaded is not None and (loaded.blob, loaded.next_offset) == (b"two", 20)
    assert redis.Redis(port=port + 1).info("replication")["role"] == "master"
