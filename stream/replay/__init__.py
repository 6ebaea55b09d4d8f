"""Replay: retrain and evaluate a model on a range of a topic's history.

The replay runs the worker itself (the same decoding, sanitizing, test-then-train,
metrics and drift detection) over a Kafka consumer with manually assigned
partitions: it joins no consumer group, so live groups and their committed offsets
are untouched. State lives in memory and is published only when asked, as a
candidate release, never over the live shards.

Its parts, in the order a replay uses them:

- `_range`: what to read, a range of offsets and a time window, and the consumer settings;
- `_start`: where the learners start: fresh, the live checkpoints or a release;
- `_adapters`: the worker's consumer, checkpoint store and dead-letter sink for a replay;
- `_recorder`: the metric series and drift points sampled as it runs, and its progress;
- `_runner`: the worker run over those adapters, and publishing the result;
- `_report`, `_plot`: the report's data, ``report.json`` and ``metrics.png``.
"""

from __future__ import annotations

from livelearn.stream.replay._plot import plot_report
from livelearn.stream.replay._range import (
    ReplayRange,
    parse_offsets,
    parse_time,
    replay_consumer_config,
    resolve_range,
)
from livelearn.stream.replay._report import write_report
from livelearn.stream.replay._runner import ReplayResult, publish, run_replay
from livelearn.stream.replay._start import StartFrom, parse_start

__all__ = [
    "ReplayRange",
    "ReplayResult",
    "StartFrom",
    "parse_offsets",
    "parse_start",
    "parse_time",
    "plot_report",
    "publish",
    "replay_consumer_config",
    "resolve_range",
    "run_replay",
    "write_report",
]
