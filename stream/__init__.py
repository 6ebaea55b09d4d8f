"""livelearn's consuming side, in the order an event goes through it:

- `stream.fetcher`: Kafka in, with kafka-python, in this process or in a child process;
- `stream.decode`: decode and validate an event (`EventDecoder`);
- `stream.dlq`: the dead-letter topic for the events that fail;
- `stream.worker`: the loop that feeds each partition's learner shard and checkpoints it
  (its jobs in `stream._events`, `stream._checkpointing`, `stream._claims` and
  `stream._reporting`);
- `stream.kafka_watch`: whether Kafka answers the consumer, and whether it makes progress;
- `stream.health`, `stream.metrics`: /healthz, /readyz and /metrics;
- `stream.app`: the worker wired to the real Kafka, Redis and HTTP server;
- `stream.replay`: the same code over a historical range of a topic.

The names below load on first use: the Kafka fetch process imports `stream.fetcher`, and
importing this package must not make it load River and pydantic first: the child starts
with every worker, and a worker's start-up delays its first rebalance.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livelearn.stream.decode import Event, EventDecoder
    from livelearn.stream.worker import Worker

_LAZY = {
    "Event": "livelearn.stream.decode",
    "EventDecoder": "livelearn.stream.decode",
    "Worker": "livelearn.stream.worker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")


__all__ = ["Event", "EventDecoder", "Worker"]
