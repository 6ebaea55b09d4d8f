"""The accuracy estimated before the labels come, through a worker on a real Kafka broker
and Redis server: exported beside the realised accuracy of the same windows, checkpointed,
and recorded by a release as the reference its alert compares with."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from river import datasets

from livelearn.serving import Lookup, ServingMetrics
from livelearn.settings import load_settings
from livelearn.store.releases import ReleaseStore
from tests.integration.conftest import (
    HASH_KEY,
    SNAPSHOT_KEY,
    Deployment,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

WINDOW = 200
LATE = 100  # each label comes this many prediction events after its prediction


def _events() -> list[bytes]:
    """Phishing's 1,250 rows as prediction events, each label-only event ``LATE`` events
    after its prediction (the last labels at the end)."""
    rows = list(datasets.Phishing())
    out: list[dict[str, Any]] = []
    base = 1_700_000_000_000
    for i, (x, _) in enumerate(rows):
        out.append({"id": f"e{i}", "ts": base + i, "features": x})
        if i >= LATE:
            out.append({"id": f"e{i - LATE}", "ts": base + i, "label": rows[i - LATE][1]})
    for j in range(len(rows) - LATE, len(rows)):
        out.append({"id": f"e{j}", "ts": base + len(rows), "label": rows[j][1]})
    return [orjson.dumps(e) for e in out]


def _gauge(text: str, name: str, **labels: str) -> float | None:
    """A sample's value in Prometheus text, None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return None


def test_the_worker_exports_the_estimate_beside_the_realised_accuracy(
    deploy: Callable[..., Deployment],
    make_topic: Callable[..., str],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    services: Any,
) -> None:
    topic = make_topic(1)
    dep = deploy(
        topic,
        delayed_labels={"max_pending": 10_000, "max_age_s": 3600},
        monitor={"window": WINDOW},
        checkpoint={"every_events": 500, "every_seconds": 0.5},
    )
    values = _events()
    produce(dep.bootstrap, topic, values)
    worker = dep.start_worker()
    dep.wait_for_offsets(len(values), 1, 120, worker)
    stats = dep.stats()["estimate"]
    # 1,250 predictions: six closed windows of 200, each with all its labels.
    assert stats["windows"] == 6 and stats["unlabelled_windows"] == 0
    latest, labelled = stats["latest"], stats["labelled"]
    assert latest["index"] == labelled["index"] == 5 and labelled["labels"] == WINDOW
    # Past the first LATE predictions, prediction i is at offset 2 i - LATE.
    assert latest["first_offset"] == 2 * 5 * WINDOW - LATE
    assert latest["last_offset"] == 2 * (6 * WINDOW - 1) - LATE
    assert abs(labelled["estimated"] - labelled["realised"]) <= 0.05

    shard = {"model": dep.model, "topic": topic, "partition": "0"}

    def exported() -> bool:
        text = worker.metrics()
        return _gauge(text, "livelearn_realised_accuracy_ratio", **shard) == labelled["realised"]

    wait_for(exported, 30, "the realised accuracy exported", context=worker.tail)
    text = worker.metrics()
    estimated = "livelearn_estimated_accuracy_ratio"
    assert _gauge(text, estimated, **shard, window="latest") == latest["estimated"]
    assert _gauge(text, estimated, **shard, window="labelled") == labelled["estimated"]
    assert worker.terminate() == 0

    # The learner in the checkpoint holds the same figures (restored, it goes on from them).
    assert dep.learner().stats()["estimate"] == stats

    # A release records the estimate as its reference; an API pinned to it exports it.
    releases = ReleaseStore(redis_client, dep.store, SNAPSHOT_KEY.encode(), f"ll-{dep.model}")
    number = releases.create(dep.model)
    releases.promote(dep.model, number)
    for name, value in {
        "LIVELEARN_REDIS__URL": services.redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": SNAPSHOT_KEY,
        "LIVELEARN_SECURITY__HASH_KEY": HASH_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    registry = CollectorRegistry()
    lookup = Lookup(load_settings(dep.config_path), metrics=ServingMetrics(registry))
    lookup.start()
    try:
        reference = {"model": dep.model, "release": str(number), "metric": "EstimatedAccuracy"}
        wait_for(
            lambda: (
                registry.get_sample_value("livelearn_release_reference_metric", reference)
                is not None
            ),
            30,
            "the release's reference exported",
        )
        got = registry.get_sample_value("livelearn_release_reference_metric", reference)
        assert got == pytest.approx(stats["reference"], abs=1e-12)
    finally:
        lookup.close()
