"""The label router (stream/label_router.py) with Kafka clients faked: what it forwards,
where, in which transaction, and what a failure leaves. tests/integration/test_label_topic.py
proves it on a real broker, through a SIGKILL."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from kafka import TopicPartition

from livelearn.errors import DeadLetterError, SpecError
from livelearn.learners import ModelSpec, spec_fingerprint
from livelearn.settings import Settings
from livelearn.stream.fetcher import KafkaStatus
from livelearn.stream.label_router import SOURCE_HEADER, LabelRouter, label_routes
from livelearn.stream.metrics import WorkerMetrics
from tests.unit.test_worker_loop import FakeDlq, Record

PIPELINE = [{"class": "linear_model.LogisticRegression"}]


def _model(name: str, model_topic: str, label: str = "label", **delayed: Any) -> dict[str, Any]:
    return {
        "name": name,
        "topics": [model_topic],
        "task": "binary",
        "label": label,
        "pipeline": PIPELINE,
        "delayed_labels": delayed,
    }


def _settings(*models: dict[str, Any], stall_timeout_s: float = 30.0) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": "localhost:1", "group_id": "g"},
        redis={"url": "redis://localhost:1/0"},
        outage={"retry_initial_s": 0.01, "retry_max_s": 0.01, "stall_timeout_s": stall_timeout_s},
        models=list(models),
    )


class FakeConsumer:
    """Hands out ``batches`` (then stops the router); records what it was asked."""

    def __init__(
        self, batches: list[list[Record]], router: list[LabelRouter], poll_s: float = 0.0
    ) -> None:
        self.batches, self.router, self.poll_s = batches, router, poll_s
        self.subscribed: list[str] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        self.subscribed = topics

    def status(self) -> KafkaStatus:
        """Never a stable member (as a kafka-python consumer stuck after a failed rebalance)."""
        return KafkaStatus(time.monotonic(), None, True, False, 0)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        time.sleep(self.poll_s)
        if not self.batches:
            self.router[0].stop()
            return {}
        out: dict[TopicPartition, list[Record]] = {}
        for rec in self.batches.pop(0):
            out.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
        return out

    def group_metadata(self) -> str:
        return "g.labels-generation"

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self, log: list[Any], **config: Any) -> None:
        self.log, self.config = log, config

    def init_transactions(self) -> None:
        self.log.append("init")

    def begin_transaction(self) -> None:
        self.log.append("begin")

    def send(self, topic: str, value=None, key=None, headers=None, timestamp_ms=None) -> None:
        self.log.append(("send", topic, orjson.loads(value)["id"], key, headers, timestamp_ms))

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], group_metadata: Any) -> None:
        self.log.append(
            ("offsets", {(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})
        )

    def commit_transaction(self) -> None:
        self.log.append("commit")

    def abort_transaction(self) -> None:
        self.log.append("abort")

    def close(self, timeout: float | None = None) -> None:
        self.log.append("close")


class ClosingDlq(FakeDlq):
    def __init__(self, fail_flushes: int = 0) -> None:
        super().__init__()
        self.fail_flushes = fail_flushes
        self.closed = False

    def flush(self) -> None:
        super().flush()
        if self.fail_flushes:
            self.fail_flushes -= 1
            raise DeadLetterError([("labels", 0, 1)], ["broker down"])

    def close(self) -> None:
        self.closed = True


def _router(
    settings: Settings,
    batches: list[list[Record]],
    dlq: ClosingDlq | None = None,
    poll_s: float = 0.0,
) -> tuple[LabelRouter, list[Any], list[FakeConsumer], ClosingDlq, WorkerMetrics]:
    log: list[Any] = []
    consumers: list[FakeConsumer] = []
    holder: list[LabelRouter] = []
    dlq = dlq or ClosingDlq()
    metrics = WorkerMetrics()

    def make_consumer(**config: Any) -> FakeConsumer:
        assert config["isolation_level"] == "read_committed" and config["group_id"] == "g.labels"
        consumers.append(FakeConsumer(batches, holder, poll_s))
        return consumers[-1]

    router = LabelRouter(
        settings,
        metrics,
        dlq,
        consumer_factory=make_consumer,
        producer_factory=lambda **config: FakeProducer(log, **config),
    )
    holder.append(router)
    return router, log, consumers, dlq, metrics


def _label(offset: int, event_id: str, key: bytes | None = None, **fields: Any) -> Record:
    value = orjson.dumps({"id": event_id, **fields})
    return Record("labels", 0, offset, key, value, 1_700_000_000_000 + offset)


def _run(router: LabelRouter) -> None:
    thread = threading.Thread(target=router.run)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_labels_are_forwarded_keyed_like_their_event_in_one_transaction_with_offsets() -> None:
    settings = _settings(_model("m", "payments", topic="labels"))
    batch = [
        _label(5, "a", key=b"k-a", label=True),
        _label(6, "b", label=False),
        Record("labels", 0, 7, None, orjson.dumps({"id": "c", "key": "k-c", "label": 1}), 9),
        _label(8, "d"),  # no label: dead-lettered
        Record("labels", 0, 9, None, b"{oops", 10),
    ]
    router, log, consumers, dlq, metrics = _router(settings, [batch])
    _run(router)
    assert consumers[0].subscribed == ["labels"]
    source = [(SOURCE_HEADER, b"labels/0/5")]
    assert log == [
        "init",
        "begin",
        ("send", "payments", "a", b"k-a", source, 1_700_000_000_005),
        ("send", "payments", "b", b"b", [(SOURCE_HEADER, b"labels/0/6")], 1_700_000_000_006),
        ("send", "payments", "c", b"k-c", [(SOURCE_HEADER, b"labels/0/7")], 9),
        ("offsets", {("labels", 0): 10}),
        "commit",
        "close",
    ]
    assert [(d["reason"], d["source"]) for d in dlq.sent] == [
        ("missing_field", ("labels", 0, 8)),
        ("not_json", ("labels", 0, 9)),
    ]
    assert dlq.flushes == 1 and dlq.closed and consumers[0].closed
    forwarded = metrics.labels_forwarded
    assert forwarded.labels("labels", "forwarded")._value.get() == 3
    assert forwarded.labels("labels", "dead_lettered")._value.get() == 2
    assert metrics.dead_letters.labels("labels", "not_json")._value.get() == 1


def test_an_undelivered_dead_letter_aborts_the_batch_and_it_is_forwarded_again() -> None:
    settings = _settings(_model("m", "payments", topic="labels"))
    batch = [_label(0, "a", label=True), Record("labels", 0, 1, None, b"x", 1)]
    # The consumer is rebuilt after the failure and (as Kafka would, from the committed
    # offset) hands out the same batch again.
    router, log, consumers, _, metrics = _router(settings, [batch, batch], ClosingDlq(1))
    _run(router)
    first_abort = log.index("abort")
    assert "commit" not in log[:first_abort] and "offsets" not in str(log[:first_abort])
    assert log[first_abort + 1 : first_abort + 3] == ["close", "init"]  # a new producer
    assert log[-3:] == [("offsets", {("labels", 0): 2}), "commit", "close"]
    assert len(consumers) == 2 and consumers[0].closed
    assert metrics.label_router_errors._value.get() == 1
    assert metrics.labels_forwarded.labels("labels", "forwarded")._value.get() == 1


def test_a_consumer_that_stays_out_of_its_group_is_replaced() -> None:
    # The fake consumer never reports a stable membership, as a kafka-python consumer
    # stuck after a failed rebalance: past outage.stall_timeout_s the router replaces it.
    settings = _settings(_model("m", "payments", topic="labels"), stall_timeout_s=0.05)
    idle: list[list[Record]] = [[] for _ in range(20)]  # 20 empty polls of 10 ms
    router, log, consumers, _, metrics = _router(settings, idle, poll_s=0.01)
    _run(router)
    assert len(consumers) >= 2 and consumers[0].closed
    assert metrics.label_router_errors._value.get() >= 1
    assert log.count("init") >= 2  # the producer is made anew with it


def test_one_label_topic_feeds_each_model_topic_whose_label_it_carries() -> None:
    settings = _settings(
        _model("fraud", "payments", label="fraud", topic="outcomes"),
        _model("churn", "sessions", label="churned", topic="outcomes"),
        _model("fraud2", "payments", label="fraud", topic="outcomes"),
    )
    routes = label_routes(settings.models)
    assert list(routes) == ["outcomes"]
    assert routes["outcomes"].targets == (("payments", ("fraud",)), ("sessions", ("churned",)))
    batch = [
        Record("outcomes", 1, 0, None, orjson.dumps({"id": "x", "fraud": True}), 1),
        Record("outcomes", 1, 1, None, orjson.dumps({"id": "y", "churned": False}), 2),
        Record("outcomes", 1, 2, None, orjson.dumps({"id": "z", "fraud": 1, "churned": 1}), 3),
    ]
    router, log, *_ = _router(settings, [batch])
    _run(router)
    assert [(e[1], e[2]) for e in log if e[0] == "send"] == [
        ("payments", "x"),
        ("sessions", "y"),
        ("payments", "z"),
        ("sessions", "z"),
    ]


def test_a_worker_without_label_topics_has_no_router() -> None:
    with pytest.raises(ValueError, match="separate topic"):
        LabelRouter(_settings(_model("m", "t")), WorkerMetrics(), ClosingDlq())


@pytest.mark.parametrize(
    ("topics", "label_topic", "message"),
    [
        (["t"], "t", "the model's own topic"),
        (["t", "u"], "labels", "must learn from one topic, not 2"),
        (["t"], "bad topic!", "should match pattern"),
    ],
)
def test_a_label_topic_that_cannot_work_is_refused_naming_the_setting(
    topics: list[str], label_topic: str, message: str
) -> None:
    data = {**_model("m", "t", topic=label_topic), "topics": topics}
    with pytest.raises(SpecError) as err:
        ModelSpec.from_config(data, loc="models[0]")
    assert "models[0].delayed_labels.topic" in str(err.value) and message in str(err.value)


def test_where_labels_come_from_is_not_part_of_the_fingerprint() -> None:
    same_topic = ModelSpec.model_validate(_model("m", "t"))
    own_topic = ModelSpec.model_validate(_model("m", "t", topic="labels"))
    assert spec_fingerprint(same_topic) == spec_fingerprint(own_topic)
    bounded = ModelSpec.model_validate(_model("m", "t", topic="labels", max_pending=5))
    assert spec_fingerprint(bounded) != spec_fingerprint(own_topic)
