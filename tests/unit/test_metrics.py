"""The worker's metrics follow Prometheus naming: prefix, units, ``_total`` counters."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from livelearn.stream.metrics import WorkerMetrics

# "_up": a 1/0 state without a unit, as Prometheus' own ``up``.
UNITS = ("_seconds", "_bytes", "_events", "_total", "_partitions", "_metric", "_up")


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
