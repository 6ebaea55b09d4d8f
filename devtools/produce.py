"""Stream a River data set into a topic as contract events (demo, tests, benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from kafka import KafkaProducer

from livelearn.settings import server_list

# Data sets River ships inside the package (no download needed).
DATASETS: dict[str, str] = {
    "phishing": "Phishing",
    "trump_approval": "TrumpApproval",
    "image_segments": "ImageSegments",
}


def dataset_events(name: str, start_ms: int | None = None) -> Iterator[dict[str, Any]]:
    """Events of a bundled River data set, one a second of event time.

    >>> event = next(dataset_events("phishing", start_ms=0))
    >>> sorted(event), event["ts"], type(event["label"]).__name__
    (['features', 'id', 'key', 'label', 'ts'], 0, 'bool')
    """
    from river import datasets

    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    data = getattr(datasets, DATASETS[name])()
    t0 = int(time.time() * 1000) if start_ms is None else start_ms
    for i, (x, y) in enumerate(data):
        yield {"id": f"{name}-{i}", "ts": t0 + 1000 * i, "key": None, "features": x, "label": y}


def produce_events(
    bootstrap_servers: str,
    topic: str,
    events: Iterator[dict[str, Any]],
    *,
    rate: float | None = None,
    limit: int | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send events (JSON) to ``topic``, at most ``rate`` a second; return how many."""
    producer = KafkaProducer(
        bootstrap_servers=server_list(bootstrap_servers),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    sent = 0
    started = time.monotonic()
    try:
        for event in events:
            if limit is not None and sent >= limit:
                break
            key = event.get("key")
            producer.send(topic, orjson.dumps(event), key=key.encode() if key else None)
            sent += 1
            if on_sent is not None:
                on_sent(sent)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    return sent
