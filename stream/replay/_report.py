"""A replay's report: its data, and the folder it is written to."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from livelearn.learners import ModelSpec, combine_metrics
from livelearn.store.checkpoints import Checkpoint, ShardId
from livelearn.stream.replay._adapters import InvalidEvents
from livelearn.stream.replay._plot import plot_report
from livelearn.stream.replay._range import ReplayRange
from livelearn.stream.replay._recorder import Recorder
from livelearn.stream.replay._start import StartFrom

# The live model scored beside the replayed one runs under its name plus this suffix.
COMPARE_SUFFIX = "--live"


def build_report(
    spec: ModelSpec,
    span: ReplayRange,
    start: StartFrom,
    initial: Mapping[ShardId, Checkpoint],
    final: Mapping[ShardId, Checkpoint],
    recorder: Recorder,
    invalid: InvalidEvents,
    elapsed: float,
    interrupted: bool,
    *,
    scored_since: Mapping[ShardId, Checkpoint] | None = None,
    window: Mapping[TopicPartition, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The report's data: counts, rate, final and rolling metrics, series and drift.

    ``scored_since`` are the states the metrics started from (``initial`` unless a
    warm-up came first); ``window`` the offsets both models of a comparison were scored on.
    """
    since = initial if scored_since is None else scored_since

    def during(shard: ShardId, count: str, start: Mapping[ShardId, Checkpoint]) -> int:
        """Events counted by the shard during the replay (its start state had some)."""
        before = start[shard].stats.get(count, 0) if shard in start else 0
        return int(final[shard].stats.get(count, 0) - before)

    def summary(model: str) -> dict[str, Any]:
        shards = {s: c for s, c in final.items() if s.model == model}
        return {
            "events_learned": sum(during(s, "events_learned", initial) for s in shards),
            "events_scored": sum(during(s, "events_scored", since) for s in shards),
            "shards": {
                f"{s.topic}/{s.partition}": {
                    "next_offset": c.next_offset,
                    "events_learned": during(s, "events_learned", initial),
                    "metrics": c.stats.get("metrics", {}),
                    "rolling_metrics": c.stats.get("rolling_metrics", {}),
                    "drift_detections": c.stats.get("drift_detections", 0),
                    "label_free_alarms": c.stats.get("monitor", {}).get("alarm_offsets", []),
                }
                for s, c in sorted(shards.items())
            },
            "metrics": _weighted(shards.values(), "metrics"),
            "rolling_metrics": _weighted(shards.values(), "rolling_metrics"),
            "series": recorder.series.get(model, []),
            "drift": recorder.drift.get(model, []),
        }

    replayed = summary(spec.name)
    events = replayed["events_scored"]
    report: dict[str, Any] = {
        "model": spec.name,
        "task": spec.task,
        "primary_metric": spec.metrics[0],
        "start": start if isinstance(start, str) else f"release:{start}",
        "range": span.describe(),
        # Where the replayed model began per partition: the range's start, or where its
        # start state (live model, release) stopped when that is later.
        "started_at": {
            f"{tp.topic}/{tp.partition}": (
                initial[shard].next_offset
                if (shard := ShardId(spec.name, tp.topic, tp.partition)) in initial
                else first
            )
            for tp, (first, _) in sorted(span.offsets.items())
        },
        "interrupted": interrupted,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed, 1) if elapsed else None,
        "counts": {
            "learned": replayed["events_learned"],
            "scored": events,
            "invalid": len(invalid.seen),
        },
        "invalid": invalid.seen,
        "replayed": replayed,
    }
    if window is not None:
        report["compare"] = {
            # Both models are scored on these offsets only: events neither had learned.
            "scored_on": {
                f"{tp.topic}/{tp.partition}": list(r) for tp, r in sorted(window.items())
            },
            "live": summary(spec.name + COMPARE_SUFFIX),
        }
    return report


def write_report(report: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``metrics.png`` into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    png_path = folder / "metrics.png"
    plot_report(report, png_path)
    return json_path, png_path


def _weighted(rows: Iterable[Checkpoint], key: str) -> dict[str, float | None]:
    """Metric values over shards, weighted by events learned."""
    return combine_metrics([(r.stats.get(key, {}), r.stats.get("events_learned", 0)) for r in rows])
