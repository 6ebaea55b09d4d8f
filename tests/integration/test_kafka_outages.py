"""The worker rides out Kafka's outages on a real broker: a broker restarted while the
worker joins its group or while it learns, a broker down for longer than the bound, and a
fetch process that stops making progress.

The broker tests stop and restart a private stack's Kafka (never the session's); the
checkpoints stay in the session's Redis.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livelearn.devtools import stack
from tests.integration.conftest import (
    Deployment,
    each_client,
    encode,
    free_port,
    free_port_run,
    phishing_events,
    produce,
    wait_for,
)
from tests.integration.test_label_topic import (
    assert_forwarded_once,
    assert_rivers_loop,
    joined,
    label_stream,
    produce_with_labels,
)
from tests.integration.test_worker import (
    _fetch_processes,
    _owns_a_shard,
    _running,
    assert_learned_as_rivers_loop,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KAFKA_UP = 'livelearn_dependency_up{dependency="kafka"}'


class PrivateKafka:
    """A Kafka broker of this module's own, to stop and start."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.kafka_port, self.redis_port = free_port_run(2), free_port()
        libs = REPO / ".stack" / "kafka" / "libs"
        if (libs / ".complete").is_file():  # the session's jars: no Maven run
            target = state_dir / "kafka" / "libs"
            target.mkdir(parents=True)
            for jar in libs.iterdir():
                (target / jar.name).write_bytes(jar.read_bytes())
        self.bootstrap = self.up()

    def up(self) -> str:
        return stack.up(self.state_dir, self.kafka_port, self.redis_port).bootstrap_servers

    def down(self) -> None:
        stack.down(self.state_dir)


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path_factory.mktemp("stack"))
    try:
        yield kafka
    finally:
        kafka.down()


@pytest.fixture
def on_private_kafka(
    private_kafka: PrivateKafka, deploy: Callable[..., Deployment], unique_name: str
) -> Callable[..., Deployment]:
    """``deploy`` with a fresh topic on the private broker, started if it is down."""
    from kafka import KafkaAdminClient

    def make(partitions: int = 1, **kwargs: Any) -> Deployment:
        bootstrap = private_kafka.up()
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics(
                {unique_name: {"num_partitions": partitions, "replication_factor": 1}},
                wait_for_metadata=True,
            )
        finally:
            admin.close()
        dep = deploy(unique_name, **kwargs)
        dep.env["LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
        dep.bootstrap = bootstrap
        return dep

    return make


FAST = {  # detect a stall within seconds, and give a restarting broker a minute
    "outage": {"stall_timeout_s": 5, "timeout_s": 60, "retry_max_s": 1},
}


@each_client
def test_broker_restarted_as_the_worker_joins_learns_every_event_once(
    private_kafka, on_private_kafka, client
) -> None:
    dep = on_private_kafka(
        settings={**FAST, "kafka": {"client": client}},
        checkpoint={"every_events": 37, "every_seconds": 0.3},
    )
    events = phishing_events(n=1000)
    produce(dep.bootstrap, dep.topic, encode(events))
    worker = dep.start_worker()
    wait_for(lambda: "worker subscribed" in worker.log(), 60, "the worker to subscribe")
    private_kafka.down()  # the worker is looking for its coordinator or joining right now
    private_kafka.up()
    back = time.monotonic()
    wait_for(lambda: dep.next_offset() == 1000, 90, "1000 events learned", context=worker.tail)
    print(f"learned everything {time.monotonic() - back:.1f} s after the broker was back")
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)


@each_client
def test_broker_restarted_while_learning_pauses_and_resumes_exactly_once(
    private_kafka, on_private_kafka, client
) -> None:
    dep = on_private_kafka(
        settings={**FAST, "kafka": {"client": client}},
        checkpoint={"every_events": 37, "every_seconds": 0.3},
    )
    events = phishing_events(n=1200)
    produce(dep.bootstrap, dep.topic, encode(events[:600]))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 600, 60, "600 events learned", context=worker.tail)
    assert worker.readyz()[0] == 200

    def not_ready_while_down() -> None:
        # /readyz and the gauge follow Kafka itself, not the loop's (empty) polls.
        wait_for(
            lambda: worker.readyz()[1].get("kafka") is False, 30, "/readyz to say kafka: false"
        )
        status, body = worker.readyz()
        assert status == 503 and body["kafka"] is False, body
        assert f"{KAFKA_UP} 0.0" in worker.metrics()

    private_kafka.down()
    not_ready_while_down()
    private_kafka.up()
    back = time.monotonic()
    produce(dep.bootstrap, dep.topic, encode(events[600:]))
    wait_for(lambda: dep.next_offset() == 1200, 90, "1200 events learned", context=worker.tail)
    print(f"learned the rest {time.monotonic() - back:.1f} s after the broker was back")
    wait_for(lambda: worker.readyz()[0] == 200, 30, "/readyz 200 again", context=worker.tail)
    assert f"{KAFKA_UP} 1.0" in worker.metrics()
    assert "Kafka answers again after" in worker.log()
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)


@each_client
def test_labels_from_their_topic_are_forwarded_once_across_a_broker_restart(
    private_kafka, on_private_kafka, unique_name, client
) -> None:
    from kafka import KafkaAdminClient

    label_topic = f"{unique_name}-labels"
    dep = on_private_kafka(
        partitions=2,
        settings={**FAST, "kafka": {"client": client}},
        delayed_labels={"topic": label_topic, "max_pending": 10_000, "max_age_s": 3600},
        checkpoint={"every_events": 37, "every_seconds": 0.3},
    )
    admin = KafkaAdminClient(bootstrap_servers=dep.bootstrap)
    try:
        admin.create_topics(
            {label_topic: {"num_partitions": 3, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()
    features, labels = label_stream(seed=3, n=600)
    half = features[300]["ts"]
    first = [label for label in labels if label["ts"] <= half]
    produce_with_labels(dep, label_topic, features[:300], first)
    worker = dep.start_worker()
    wait_for(lambda: joined(dep, 2) >= 100, 60, "labels joined", context=worker.tail)
    private_kafka.down()  # the router may be in the middle of a transaction
    private_kafka.up()
    back = time.monotonic()
    produce_with_labels(dep, label_topic, features[300:], labels[len(first) :])
    wait_for(lambda: joined(dep, 2) == 600, 120, "every label joined", context=worker.tail)
    print(f"joined every label {time.monotonic() - back:.1f} s after the broker was back")
    assert worker.terminate() == 0, worker.tail()
    records = assert_forwarded_once(dep, label_topic, labels)
    assert_rivers_loop(dep, records, partitions=2)


def test_broker_down_past_the_outage_bound_exits_69_naming_kafka(
    private_kafka, on_private_kafka
) -> None:
    dep = on_private_kafka(settings={"outage": {"timeout_s": 3, "retry_max_s": 0.5}})
    produce(dep.bootstrap, dep.topic, encode(phishing_events(n=100)))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 100, 60, "100 events learned", context=worker.tail)
    private_kafka.down()
    stopped = time.monotonic()
    code = worker.proc.wait(timeout=60)
    print(f"exited {time.monotonic() - stopped:.1f} s after the broker stopped")
    assert code == 69, worker.tail()
    last = worker.log().strip().splitlines()[-1]
    assert last.startswith("livelearn: Kafka") and "outage.timeout_s=3" in last, last
    assert dep.next_offset() == 100  # its state was checkpointed on the way out


def test_a_fetch_process_that_stops_is_replaced_and_learning_resumes(make_topic, deploy) -> None:
    """The fault run's 300 s wait: the worker sat in poll() on a fetch process that sent
    nothing. Stopped here with SIGSTOP, the process is replaced within the stall bound."""
    topic = make_topic(partitions=1)
    dep = deploy(
        topic,
        settings={
            "kafka": {"client": "kafka-python"},  # the fetch process is kafka-python's
            "outage": {"stall_timeout_s": 3, "timeout_s": 60},
        },
        checkpoint={"every_events": 37, "every_seconds": 0.3},
    )
    events = phishing_events(n=1250)
    producer = threading.Thread(
        target=produce, args=(dep.bootstrap, topic, encode(events)), kwargs={"rate": 250}
    )
    producer.start()
    worker = dep.start_worker()
    wait_for(lambda: _owns_a_shard(worker), 60, "the worker to own the shard")
    wait_for(lambda: dep.next_offset() >= 200, 60, "200 events learned", context=worker.tail)
    (child,) = _fetch_processes(worker.proc.pid)
    os.kill(child.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for(
            lambda: (
                "replacing the Kafka consumer: the Kafka consumer has not reported" in worker.log()
            ),
            30,
            "the silent fetch process to be noticed",
            context=worker.tail,
        )
        print(f"replaced {time.monotonic() - stopped_at:.1f} s after the stop")
        wait_for(lambda: not _running(child), 15, "the stopped fetch process to be killed")
    finally:
        if _running(child):
            os.kill(child.pid, signal.SIGCONT)
    producer.join()
    wait_for(lambda: dep.next_offset() == 1250, 60, "every event learned", context=worker.tail)
    print(f"learned everything {time.monotonic() - stopped_at:.1f} s after the stop")
    # Its replacement: /proc's children lists are read thread by thread and are only
    # reliable for stopped children, so one read can miss a running one.
    wait_for(
        lambda: len(_fetch_processes(worker.proc.pid)) == 1,
        10,
        "one fetch process, the replacement",
        context=worker.tail,
    )
    assert worker.terminate() == 0, worker.tail()
    assert_learned_as_rivers_loop(dep.learner(), events)
