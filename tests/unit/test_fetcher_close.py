"""``ProcessConsumer.close`` is bounded, whatever the fetch process is doing.

The fetch process runs the real child code (`stream.fetcher.serve`) over a stand-in for
kafka-python's consumer that assigns one partition at the first poll and revokes it on
close, as kafka-python does: no broker is needed to drive the pipe's handshake.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition

from livelearn.stream import fetcher
from livelearn.stream.fetcher import CLOSE_TIMEOUT_S, ProcessConsumer

FAKE_CHILD = (
    "import sys, stream.fetcher as f, tests.unit.test_fetcher_close as t; "
    "f.KafkaConsumer = t.FakeKafkaConsumer; f.serve(int(sys.argv[1]))"
)


class FakeKafkaConsumer:
    """Just enough of ``KafkaConsumer`` for the child's loop, in the child process."""

    def __init__(self, **config: Any) -> None:
        self.listener: Any = None
        self.tp: TopicPartition | None = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener, self.topic = listener, topics[0]

    def topics(self) -> set[str]:
        return {self.topic}

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        if self.tp is None:  # the first poll joins the group: a rebalance callback
            self.tp = TopicPartition(self.topic, 0)
            self.listener.on_partitions_assigned([self.tp])
        else:
            time.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[TopicPartition]:
        return set() if self.tp is None else {self.tp}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        if self.tp is not None:  # as kafka-python: revoke, then leave the group
            self.listener.on_partitions_revoked([self.tp])
        Path(os.environ["FAKE_KAFKA_CLOSED"]).write_text("left the group")


class RaisingListener:
    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        raise RuntimeError("Redis went away while claiming")

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass


@pytest.fixture
def closed_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setattr(fetcher, "_CHILD", FAKE_CHILD)
    path = tmp_path / "closed"
    monkeypatch.setenv("FAKE_KAFKA_CLOSED", str(path))
    yield path


def test_close_after_a_listener_raised_leaves_the_group_at_once(closed_file: Path) -> None:
    consumer = ProcessConsumer({}, poll_timeout_ms=50, start_timeout=30)
    consumer.subscribe(["t"], RaisingListener())
    with pytest.raises(RuntimeError, match="Redis went away"):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
    started = time.monotonic()
    consumer.close()
    elapsed = time.monotonic() - started
    # It used to wait 30 s for an answer the child never sent, then 10 s more, then kill it
    # without leaving the group: the child waited for the end of the rebalance callback.
    assert elapsed < 5, elapsed
    assert closed_file.read_text() == "left the group"
    assert consumer._proc.returncode == 0


def test_close_of_a_fetch_process_that_does_not_answer_is_bounded(closed_file: Path) -> None:
    consumer = ProcessConsumer({}, poll_timeout_ms=50, start_timeout=30)
    consumer.subscribe(["t"], RaisingListener())
    os.kill(consumer._proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    consumer.close()
    elapsed = time.monotonic() - started
    assert elapsed < CLOSE_TIMEOUT_S + 2, elapsed
    assert consumer._proc.returncode == -signal.SIGKILL  # killed, not left behind
    assert not closed_file.exists()
