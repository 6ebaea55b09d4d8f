"""livelearn: keep River models learning from live Kafka events, checkpointed exactly once
into Redis, and serve them.

This package is the foundation every other one imports: the one error tree
(`livelearn.errors`, drawn there). The product's parts, in one event's path::

    stream/fetcher.py    Kafka in (a consumer in this process or in a child process)
    stream/decode.py     decode and validate; invalid events to stream/dlq.py
    learners/sanitize.py remove or hash sensitive fields
    learners/learner.py  a shard's learner: predict, score, learn (stream/worker.py drives it)
    store/checkpoints.py the checkpoint store in Redis, and its update channel
    serving/lookup.py    the shards in memory, hot-reloaded, combined per prediction
    serving/api.py       the prediction API

`docs/architecture.md` draws the packages and the direction of their imports.
"""

from __future__ import annotations

from livelearn import errors
from livelearn.errors import *  # noqa: F403  (the public surface is the error tree)

__all__ = errors.__all__
