"""The peers bench/bench_worker.py measures the worker against, each as a user writes it.

Every peer reads the same one-partition topic from its start, decodes each event's JSON
and runs the same step, River's test-then-train (``predict_one``, the metric's
``update``, ``learn_one``), until the topic's ``n`` events are done. Each library keeps
its defaults but for what reading a finished topic from its start needs: kafka-python
and confluent-kafka are assigned the partition (no group to join), quixstreams reads in
a consumer group from ``earliest``, bytewax's ``KafkaSource`` stops at the partition's
end (``tail=False``).

The clock runs from the first event a peer hands to the step to the last one done, so
connecting, joining a group and closing are left out of every case alike.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from typing import Any

import bytewax.operators as op
import confluent_kafka
import orjson
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from kafka import KafkaConsumer, TopicPartition
from quixstreams import Application

from livelearn.learners import ModelSpec

__all__ = ["bytewax_flow", "confluent_loop", "kafka_python_loop", "quixstreams_app"]

# What the confluent-kafka loop asks ``Consumer.consume`` for at a time: it has no default
# (one message), and this is bytewax's KafkaSource default batch.
CONSUME_BATCH = 1000


class TestThenTrain:
    """River's test-then-train step over ``n`` events, with a clock."""

    def __init__(self, spec: ModelSpec, n: int) -> None:
        self.model = spec.build_pipeline()
        self.metric = spec.build_metrics()[0]
        self.n = n
        self.seen = 0
        self.started = 0.0
        self.finished = 0.0

    def __call__(self, event: dict[str, Any]) -> bool:
        """Score and learn one decoded event; True once the ``n``-th is done."""
        if not self.seen:
            self.started = time.perf_counter()
        x, y = event["features"], event["label"]
        y_pred = self.model.predict_one(x)
        if y_pred is not None:
            self.metric.update(y, y_pred)
        self.model.learn_one(x, y)
        self.seen += 1
        if self.seen == self.n:
            self.finished = time.perf_counter()
            return True
        return False

    @property
    def done(self) -> bool:
        """True once ``n`` events are done."""
        return self.seen >= self.n

    def rate(self) -> float:
        """Events a second, from the first event to the last."""
        if not self.done:
            raise RuntimeError(f"the run stopped after {self.seen} of {self.n} events")
        return self.n / (self.finished - self.started)


def kafka_python_loop(bootstrap: str, topic: str, spec: ModelSpec, n: int) -> float:
    """A kafka-python consumer with its defaults, ``poll()`` and orjson; events/s."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    step = TestThenTrain(spec, n)
    try:
        while not step.done:
            for records in consumer.poll(timeout_ms=1000).values():
                for rec in records:
                    if step(orjson.loads(rec.value)):
                        break
    finally:
        consumer.close()
    return step.rate()


def confluent_loop(bootstrap: str, topic: str, spec: ModelSpec, n: int) -> float:
    """A confluent-kafka consumer with its defaults, ``consume(batch)`` and orjson;
    events/s."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required even for an assigned partition; never joined.
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        }
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    step = TestThenTrain(spec, n)
    try:
        while not step.done:
            for msg in consumer.consume(CONSUME_BATCH, timeout=1.0):
                if msg.error() is not None:
                    raise RuntimeError(f"confluent-kafka: {msg.error()}")
                if step(orjson.loads(msg.value())):
                    break
    finally:
        consumer.close()
    return step.rate()


def quixstreams_app(bootstrap: str, topic: str, spec: ModelSpec, n: int) -> float:
    """A quixstreams Application with its defaults: a consumer group, a dataframe over
    the topic with its JSON deserializer, the step as an ``update``; events/s."""
    step = TestThenTrain(spec, n)
    with tempfile.TemporaryDirectory(prefix="livelearn-bench-quix-") as state_dir:
        app = Application(
            broker_address=bootstrap,
            consumer_group=f"bench-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            # Kept out of the bench's output and the checkout: neither changes the loop.
            loglevel=logging.WARNING,
            state_dir=state_dir,
        )
        sdf = app.dataframe(app.topic(topic, value_deserializer="json"))

        def learn(value: dict[str, Any]) -> None:
            if step(value):
                app.stop()

        sdf.update(learn)
        app.run()
    return step.rate()


def bytewax_flow(bootstrap: str, topic: str, spec: ModelSpec, n: int) -> float:
    """A bytewax dataflow: ``KafkaSource`` to the partition's end, orjson and the step in
    an ``inspect``, run by ``run_main`` (one worker); events/s."""
    step = TestThenTrain(spec, n)
    flow = Dataflow(f"bench_{uuid.uuid4().hex[:8]}")
    messages = op.input("events", flow, KafkaSource([bootstrap], [topic], tail=False))

    def learn(step_id: str, msg: KafkaSourceMessage[bytes | None, bytes | None]) -> None:
        step(orjson.loads(msg.value))

    op.inspect("learn", messages, learn)
    run_main(flow)
    return step.rate()
