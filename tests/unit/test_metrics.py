"""The worker's metrics follow Prometheus naming: prefix, units, ``_total`` counters."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry

from livelearn.stream.metrics import WorkerMetrics

# "_up": a 1/0 state without a unit, as Prometheus' own ``up``; "_ratio": a share from 0 to
# 1, Prometheus' base unit for one (an accuracy).
UNITS = ("_seconds", "_bytes", "_events", "_total", "_partitions", "_metric", "_up", "_ratio")


def test_names_prefixes_and_units() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    families = list(registry.collect())
    assert len(families) >= 14
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert re.fullmatch(r"livelearn_[a-z0-9_]+", name), name
        assert name.endswith(UNITS), name
        assert family.documentation, name


def test_two_workers_in_one_process_do_not_collide() -> None:
    first, second = WorkerMetrics(CollectorRegistry()), WorkerMetrics(CollectorRegistry())
    first.events.labels("m", "learned").inc(3)
    assert (
        second.registry.get_sample_value(
            "livelearn_events_total", {"model": "m", "outcome": "learned"}
        )
        is None
    )
    assert (
        first.registry.get_sample_value(
            "livelearn_events_total", {"model": "m", "outcome": "learned"}
        )
        == 3.0
    )


def _report(partitions: dict[str, Any], rxmsgs: int = 0) -> dict[str, Any]:
    """A librdkafka statistics report, in the shape of its STATISTICS.md, cut down."""
    return {
        "rxmsgs": rxmsgs,
        "rxmsg_bytes": 300 * rxmsgs,
        "cgrp": {"state": "up", "join_state": "steady", "rebalance_cnt": 2},
        "brokers": {
            "127.0.0.1:9092/bootstrap": {"nodeid": -1, "state": "UP", "rtt": {"cnt": 0}},
            "GroupCoordinator": {"nodeid": -1, "state": "UP", "rtt": {"cnt": 1, "avg": 9}},
            "127.0.0.1:9092/1": {
                "nodeid": 1,
                "state": "UP",
                "rtt": {"cnt": 12, "avg": 2_000, "p99": 15_000},
            },
            "127.0.0.1:9093/2": {"nodeid": 2, "state": "DOWN", "rtt": {"cnt": 0}},
        },
        "topics": {"t": {"partitions": partitions}},
    }


def _partition(desired: bool, queued: int = 0, lag: int = -1) -> dict[str, Any]:
    return {
        "desired": desired,
        "fetchq_cnt": queued,
        "fetchq_size": 100 * queued,
        "consumer_lag": lag,
    }


def test_librdkafka_statistics_are_exported_with_labels_bounded_by_brokers_and_assignment() -> None:
    now = [50.0]
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.kafka._clock = lambda: now[0]
    registry = metrics.registry
    # Nothing reported yet (a kafka-python worker): the families exist and are empty.
    assert registry.get_sample_value("livelearn_kafka_received_events_total") is None
    partitions = {
        "-1": _partition(False),  # librdkafka's internal partition
        "0": _partition(True, queued=40, lag=7),
        "1": _partition(True, queued=0),  # lag unknown (nothing committed yet)
        "2": _partition(False, queued=3),  # known from metadata, not assigned here
    }
    metrics.kafka.update(_report(partitions, rxmsgs=1000))
    now[0] = 52.5

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("livelearn_kafka_fetch_queue_events", topic="t", partition="0") == 40
    assert value("livelearn_kafka_fetch_queue_bytes", topic="t", partition="0") == 4000
    assert value("livelearn_kafka_consumer_lag_events", topic="t", partition="0") == 7
    assert value("livelearn_kafka_consumer_lag_events", topic="t", partition="1") is None
    assert value("livelearn_kafka_broker_rtt_seconds", broker="1", statistic="avg") == 0.002
    assert value("livelearn_kafka_broker_up", broker="2") == 0
    assert value("livelearn_kafka_received_events_total") == 1000
    assert value("livelearn_kafka_received_bytes_total") == 300_000
    assert value("livelearn_kafka_rebalances_total") == 2
    assert value("livelearn_kafka_statistics_age_seconds") == 2.5
    samples = [
        s for f in registry.collect() if f.name.startswith("livelearn_kafka_") for s in f.samples
    ]
    assert {s.labels.get("broker") for s in samples} <= {None, "1", "2"}
    assert {s.labels.get("partition") for s in samples} <= {None, "0", "1"}
    # A partition revoked since is gone from the next report, and from the metrics.
    metrics.kafka.update(_report({"0": _partition(True, queued=1)}))
    assert value("livelearn_kafka_fetch_queue_events", topic="t", partition="1") is None
    assert value("livelearn_kafka_fetch_queue_events", topic="t", partition="0") == 1
