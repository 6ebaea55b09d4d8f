"""Outages and fencing on real servers: a worker on the session's Kafka and a private
redis-server that the tests stop, pause and restart (with and without its data).

The worker never exits while Redis is away for less than ``outage.timeout_s``: it pauses
learning, reports it (/readyz 503, ``livelearn_dependency_up{dependency="redis"} 0``) and
ends with exactly the model of River's own loop over every event. Past the bound it exits
69 naming Redis and the setting.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml
from kafka import KafkaProducer

from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from tests.integration.conftest import (
    Deployment,
    WorkerHandle,
    each_consumer,
    encode,
    free_port,
    phishing_events,
    produce,
    wait_for,
)
from tests.integration.test_worker import assert_learned_as_rivers_loop

pytestmark = pytest.mark.integration


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, on a free port, that it stops, pauses and
    restarts; with ``appendonly`` every write is on disk before it is acknowledged."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.dir),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            wait_for(lambda: self._answers(client), 30, "the private redis-server to answer")
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, lose_data: bool = False) -> None:
        """SIGTERM (its data on disk kept), or SIGKILL and its files deleted."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL if lose_data else signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None
        if lose_data:
            for path in self.dir.iterdir():
                if path.name != "redis.log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def close(self) -> None:
        if self.proc is not None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


def _use(dep: Deployment, server: PrivateRedis) -> Deployment:
    """Point the deployment (its workers and its store) at ``server``."""
    dep.env["LIVELEARN_REDIS__URL"] = server.url
    dep.store = RedisCheckpointStore(redis.Redis.from_url(server.url), f"ll-{dep.model}")
    return dep


def _gauge(worker: WorkerHandle, sample: str) -> float | None:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", worker.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else None


REDIS_UP = 'livelearn_dependency_up{dependency="redis"}'


def _alive(worker: WorkerHandle) -> None:
    assert worker.proc.poll() is None, (
        f"the worker exited {worker.proc.returncode}\n{worker.tail()}"
    )


def _learned_everything(dep: Deployment, n: int, worker: WorkerHandle) -> None:
    def done() -> bool:
        _alive(worker)
        try:
            return dep.next_offset() == n
        except redis.RedisError:
            return False

    wait_for(done, 120, f"all {n} events learned", context=worker.tail)


@pytest.mark.parametrize(
    "fault",
    ["stopped", "restarted-without-data", "paused"],
    ids=["stopped-2.6s", "restarted-without-data", "paused-2.6s"],
)
def test_a_redis_outage_during_checkpoints_is_ridden_out_with_nothing_lost(
    make_topic, deploy, private_redis, fault
) -> None:
    private_redis.start()
    topic = make_topic(partitions=1)
    # A short socket timeout makes a paused server time out instead of blocking the loop.
    dep = _use(
        deploy(
            topic,
            checkpoint={"every_events": 50, "every_seconds": 0.2},
            settings={"redis": {"socket_timeout_s": 0.5}},
        ),
        private_redis,
    )
    events = phishing_events(n=1000)
    producer = threading.Thread(
        target=produce, args=(dep.bootstrap, topic, encode(events)), kwargs={"rate": 250}
    )
    producer.start()
    worker = dep.start_worker()
    wait_for(lambda: worker.readyz()[0] == 200, 60, "the worker to be ready", context=worker.tail)
    wait_for(lambda: dep.next_offset() >= 200, 60, "200 events learned", context=worker.tail)

    began = time.monotonic()
    if fault == "paused":
        private_redis.pause()
    else:
        private_redis.stop(lose_data=fault == "restarted-without-data")
    # The worker notices, says so, and stays up.
    wait_for(lambda: worker.readyz()[0] == 503, 30, "/readyz 503", context=worker.tail)
    status, body = worker.readyz()
    assert status == 503 and body["redis"] is False, body
    wait_for(lambda: _gauge(worker, REDIS_UP) == 0, 30, "dependency_up 0", context=worker.tail)
    # Hold the outage for 2.6 s in all, as the fault run did.
    threading.Event().wait(max(0.0, 2.6 - (time.monotonic() - began)))
    _alive(worker)
    if fault == "paused":
        private_redis.resume()
    else:
        private_redis.start()

    wait_for(lambda: _gauge(worker, REDIS_UP) == 1, 30, "dependency_up 1", context=worker.tail)
    wait_for(lambda: worker.readyz()[0] == 200, 30, "/readyz 200 again", context=worker.tail)
    producer.join()
    _learned_everything(dep, len(events), worker)
    assert worker.terminate() == 0, worker.tail()

    assert_learned_as_rivers_loop(dep.learner(), events)
    log = worker.log()
    assert "Redis does not answer: learning paused" in log
    assert "Redis answers again after" in log
    if fault == "restarted-without-data":
        assert "Redis lost the claim on shard" in log


def test_a_worker_started_while_redis_is_down_waits_then_learns(
    make_topic, deploy, private_redis
) -> None:
    topic = make_topic(partitions=1)
    dep = _use(deploy(topic), private_redis)  # not started yet
    events = phishing_events(n=300)
    produce(dep.bootstrap, topic, encode(events))
    worker = dep.start_worker()
    wait_for(lambda: "Redis does not answer" in worker.log(), 60, "the outage to be logged")
    wait_for(lambda: _gauge(worker, REDIS_UP) == 0, 30, "dependency_up 0", context=worker.tail)
    status, body = worker.readyz()
    assert status == 503 and body["redis"] is False, body
    _alive(worker)  # where it used to exit at once

    private_redis.start()
    _learned_everything(dep, len(events), worker)
    assert worker.readyz()[0] == 200
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)


def test_redis_down_past_the_outage_timeout_exits_69_naming_redis(
    make_topic, deploy, private_redis
) -> None:
    private_redis.start()
    topic = make_topic(partitions=1)
    dep = _use(deploy(topic, settings={"outage": {"timeout_s": 3}}), private_redis)
    events = phishing_events(n=400)
    produce(dep.bootstrap, topic, encode(events[:200]))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 200, 60, "200 events learned", context=worker.tail)

    private_redis.stop()
    stopped = time.monotonic()
    wait_for(lambda: worker.proc.poll() is not None, 60, "the worker to exit", context=worker.tail)
    assert worker.proc.returncode == 69, worker.tail()
    assert 3 <= time.monotonic() - stopped < 60
    log = worker.log()
    assert "livelearn: Redis has not answered for" in log
    assert "LIVELEARN_OUTAGE__TIMEOUT_S" in log and "Traceback" not in log

    # Nothing was lost: restarted with Redis back, a worker goes on from the checkpoint.
    private_redis.start()
    produce(dep.bootstrap, topic, encode(events[200:]))
    worker = dep.start_worker()
    _learned_everything(dep, len(events), worker)
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)


@each_consumer
def test_a_fenced_shard_is_reported_then_claimed_again_and_learns_every_event_once(
    make_topic, deploy, consumer
) -> None:
    topic = make_topic(partitions=1)
    dep = deploy(
        topic,
        checkpoint={"every_events": 40, "every_seconds": 0.2},
        settings={"kafka": consumer},
    )
    events = phishing_events(n=900)
    producer = threading.Thread(
        target=produce, args=(dep.bootstrap, topic, encode(events)), kwargs={"rate": 200}
    )
    producer.start()
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() >= 150, 60, "150 events learned", context=worker.tail)
    dep.store.claim(dep.shard())  # as a worker of another group, or `models reset`, would
    sample = f'livelearn_stale_epoch_total{{model="{dep.model}"}}'
    wait_for(
        lambda: _gauge(worker, sample) == 1, 30, "the stale epoch counted", context=worker.tail
    )
    status, body = worker.readyz()
    assert status == 503 and body["fenced_shards"] == [str(dep.shard())], body
    # Still assigned here after the session timeout: claimed again, from its checkpoint.
    wait_for(lambda: worker.readyz()[0] == 200, 60, "the shard claimed again", context=worker.tail)
    assert "claiming fenced shards again" in worker.log()
    producer.join()
    _learned_everything(dep, len(events), worker)
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)


@each_consumer
def test_new_shards_start_where_their_specs_say(make_topic, deploy, consumer) -> None:
    topic = make_topic(partitions=1)
    dep = deploy(topic, start="earliest", settings={"kafka": consumer})
    t0 = 1_700_000_000_000
    events = phishing_events(n=150)
    producer = KafkaProducer(bootstrap_servers=dep.bootstrap, acks="all")
    for i, value in enumerate(encode(events[:100])):  # record i at t0 + i seconds
        producer.send(topic, value, partition=0, timestamp_ms=t0 + 1000 * i)
    producer.flush(timeout=60)
    # Two more models on the topic: one from a time, one from the end.
    config = yaml.safe_load(dep.config_path.read_text())
    base = config["models"][0]
    at_40 = datetime.fromtimestamp((t0 + 40_000) / 1000, UTC).isoformat()
    config["models"] += [
        {**base, "name": f"{dep.model}-t", "start": at_40},
        {**base, "name": f"{dep.model}-l", "start": "latest"},
    ]
    dep.config_path.write_text(yaml.safe_dump(config))
    worker = dep.start_worker()
    latest = ShardId(f"{dep.model}-l", topic, 0)
    # The latest one is pinned at once at the end it found: 100.
    wait_for(lambda: dep.store.describe(latest), 60, "the latest start pinned", context=worker.tail)
    assert dep.store.describe(latest)["next_offset"] == 100  # type: ignore[index]
    for i, value in enumerate(encode(events[100:]), start=100):
        producer.send(topic, value, partition=0, timestamp_ms=t0 + 1000 * i)
    producer.flush(timeout=60)
    producer.close()
    names = [dep.model, f"{dep.model}-t", f"{dep.model}-l"]

    def all_at_the_end() -> bool:
        rows = [dep.store.describe(ShardId(n, topic, 0)) for n in names]
        return all(r is not None and r["next_offset"] == 150 for r in rows)

    wait_for(all_at_the_end, 60, "every model at offset 150", context=worker.tail)
    assert worker.terminate() == 0, worker.tail()
    learned = [dep.store.describe(ShardId(n, topic, 0))["stats"]["events_learned"] for n in names]  # type: ignore[index]
    assert learned == [150, 110, 50]
