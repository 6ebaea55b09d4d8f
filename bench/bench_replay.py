"""Replay rate against River's own loop on the same events, in one run.

The replay runs the worker's code over manually assigned partitions (no group),
with the default 200-point metric series and no report rendering. Target: at least 0.8 of it.
"""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer

from bench.bench_worker import SPECS, _events, _spec, river_loop, services, topic_with
from livelearn.learners import SnapshotCodec
from livelearn.settings import load_settings
from livelearn.stream.replay import replay_consumer_config, resolve_range, run_replay


def replay_rate(
    bootstrap: str, redis_url: str, topic: str, body: dict[str, object], n: int
) -> float:
    """Events per second of a replay of the whole topic from fresh, start-up included."""
    spec = _spec("bench", topic, dict(body))
    settings = load_settings(
        None, kafka={"bootstrap_servers": bootstrap}, redis={"url": redis_url}, models=[spec]
    )
    consumer = KafkaConsumer(**replay_consumer_config(settings))
    span = resolve_range(consumer, [topic])
    key = uuid.uuid4().hex.encode()
    result = run_replay(settings, spec, consumer, span, SnapshotCodec(key), key, progress=False)
    assert result.report["counts"]["scored"] == n, result.report["counts"]
    return float(n / result.report["seconds"])


def main(events: int = 100_000) -> None:
    bootstrap, redis_url = services()
    values = _events(events)
    topic = topic_with(bootstrap, values)
    print(f"\nreplay rate, {events} Phishing events on one partition\n")
    print(f"{'model':36} {'river loop':>12} {'replay':>12} {'ratio':>6}")
    for label, body in SPECS.items():
        a = river_loop(_spec("bench", topic, body), values)
        r = replay_rate(bootstrap, redis_url, topic, body, events)
        print(f"{label:36} {a:10.0f}/s {r:10.0f}/s {r / a:6.2f}")
    print("\ntarget: replay >= 0.8x River's own loop")


if __name__ == "__main__":
    main()
