"""What the worker reports: event counts, checkpoint gauges, model metrics, label-free
signals and alarms, lag and progress lines (the metrics are in stream/metrics.py)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from livelearn.learners import combine_metrics
from livelearn.learners.monitor import SIGNALS
from livelearn.stream._base import WorkerState
from livelearn.stream._shard import Partition, Shard, ShardProgress, Trigger

log = logging.getLogger("livelearn.worker")


class Reporting(WorkerState):
    """The worker's metrics and progress lines."""

    def progress(self) -> list[ShardProgress]:
        """Counts and metrics of every live shard (call it on the worker's thread)."""
        out = []
        for part in list(self._partitions.values()):
            for shard in list(part.shards):
                stats = shard.learner.stats()
                out.append(
                    ShardProgress(
                        shard.id,
                        shard.next_offset,
                        stats["events_learned"],
                        stats["events_scored"],
                        stats["metrics"],
                        stats["rolling_metrics"],
                    )
                )
        return out

    def _report_checkpoint(
        self,
        part: Partition,
        shard: Shard,
        trigger: Trigger,
        size: int,
        stats: dict[str, Any],
        elapsed: float,
        interval: float,
    ) -> None:
        """A checkpoint of ``shard`` was written: its cost, and the gauges it refreshes
        (``interval``: the wall time since the shard's previous checkpoint)."""
        m = self._metrics
        m.checkpoint_seconds.labels(shard.id.model).observe(elapsed)
        m.checkpoints.labels(shard.id.model, trigger).inc()
        log.debug(
            "checkpoint written",
            extra={
                "fields": {
                    "shard": str(shard.id),
                    "next_offset": shard.next_offset,
                    "bytes": size,
                    "seconds": round(elapsed, 6),
                    "trigger": trigger,
                }
            },
        )
        if self._partitions.get(part.tp) is not part:
            return  # revoked: its new owner reports the shard's gauges
        labels = (shard.id.model, shard.id.topic, str(shard.id.partition))
        m.checkpoint_size.labels(*labels).set(size)
        m.checkpoint_time.labels(*labels).set(time.time())
        m.checkpoint_interval.labels(*labels).set(interval)
        holdout = stats.get("holdout", {})
        for window, values in (
            ("cumulative", stats["metrics"]),
            ("rolling", stats["rolling_metrics"]),
            ("holdout", holdout.get("metrics", {})),
        ):
            for name, value in values.items():
                if value is not None:
                    m.model_metric.labels(*labels, name, window).set(value)
        for name, gap in holdout.get("gap", {}).items():
            if gap is not None:
                m.holdout_gap.labels(*labels, name).set(gap)
        if "monitor" in stats:
            self._report_monitor(shard, stats["monitor"], labels)
        if "estimate" in stats:
            self._report_estimate(stats["estimate"], labels)

    def _report_estimate(self, estimate: Mapping[str, Any], labels: tuple[str, str, str]) -> None:
        """The estimated accuracy of the newest window, and the estimated and realised
        accuracy of the newest labelled window (the same predictions)."""
        m = self._metrics
        latest, labelled = estimate.get("latest"), estimate.get("labelled")
        if latest is not None and latest.get("estimated") is not None:
            m.estimated_accuracy.labels(*labels, "latest").set(latest["estimated"])
        if labelled is not None and labelled.get("realised") is not None:
            m.estimated_accuracy.labels(*labels, "labelled").set(labelled["estimated"])
            m.realised_accuracy.labels(*labels).set(labelled["realised"])

    def _report_counts(self, part: Partition) -> None:
        events = self._metrics.events
        drift = self._metrics.drift
        for shard in part.shards:
            learner = shard.learner
            if learner.events_learned != shard.reported_learned:
                events.labels(shard.id.model, "learned").inc(
                    learner.events_learned - shard.reported_learned
                )
                shard.reported_learned = learner.events_learned
            only_scored = learner.events_only_scored
            if only_scored != shard.reported_scored:
                events.labels(shard.id.model, "scored").inc(only_scored - shard.reported_scored)
                shard.reported_scored = only_scored
            if shard.delayed:
                self._report_labels(shard)
            detections = learner.drift_detections
            if detections != shard.reported_drift:
                drift.labels(shard.id.model, shard.id.topic, str(shard.id.partition)).inc(
                    detections - shard.reported_drift
                )
                shard.reported_drift = detections

    def _report_monitor(
        self, shard: Shard, monitor: dict[str, Any], labels: tuple[str, str, str]
    ) -> None:
        """The label-free signals of the last finished window and their thresholds, and
        each new alarm, explained from the alarm itself (not from the last window)."""
        m = self._metrics
        thresholds = monitor.get("thresholds", {})
        for signal, value in monitor["signals"].items():
            if value is not None:
                m.signal.labels(*labels, signal).set(value)
            if thresholds.get(signal) is not None:
                m.signal_threshold.labels(*labels, signal).set(thresholds[signal])
        for signal, grown in _growth(shard.reported_alarms, monitor["alarms"]).items():
            m.alarms.labels(shard.id.model, signal).inc(grown)
        seq = monitor.get("alarm_seq", 0)
        new = [a for a in monitor.get("alarm_log", []) if a["seq"] > shard.reported_alarm_seq]
        if seq > shard.reported_alarm_seq and len(new) < seq - shard.reported_alarm_seq:
            log.warning(
                "label-free alarms not logged: more than the monitor keeps came between "
                "two checkpoints",
                extra={
                    "fields": {
                        "shard": str(shard.id),
                        "missed": seq - shard.reported_alarm_seq - len(new),
                    }
                },
            )
        shard.reported_alarm_seq = seq  # taken as is when it fell (a rollback)
        for alarm in new:
            self._report_alarm(shard, alarm, labels)

    def _report_alarm(
        self, shard: Shard, alarm: dict[str, Any], labels: tuple[str, str, str]
    ) -> None:
        """One alarm: a log line with all it records, and its shard's alarm series."""
        signal = alarm["signal"]
        named = alarm_label(alarm)
        log.warning(
            "label-free alarm: %s on %s, %.3g over its threshold %.3g",
            signal,
            named,
            alarm["value"],
            alarm["threshold"],
            extra={
                "fields": {
                    "shard": str(shard.id),
                    **{k: v for k, v in alarm.items() if k != "also"},
                    "first_event_time": _iso(alarm["first_event_ms"]),
                    "last_event_time": _iso(alarm["last_event_ms"]),
                    "also": alarm["also"],
                }
            },
        )
        previous = shard.alarm_features.get(signal)
        if previous is not None and previous != named:
            with contextlib.suppress(KeyError):
                self._metrics.alarm_time.remove(*labels, signal, previous)
        self._metrics.alarm_time.labels(*labels, signal, named).set(time.time())
        shard.alarm_features[signal] = named

    def _report_labels(self, shard: Shard) -> None:
        """Joined and expired predictions since the last report, and those pending."""
        model = shard.id.model
        for outcome, grown in _growth(shard.reported_labels, shard.learner.label_counts).items():
            self._metrics.labels.labels(model, outcome).inc(grown)
        self._metrics.pending_labels.labels(model, shard.id.topic, str(shard.id.partition)).set(
            shard.learner.pending_labels
        )

    def _update_lag(self, part: Partition) -> None:
        end = self._consumer.highwater(part.tp)
        offset = part.position()
        if end is not None and offset is not None:
            self._metrics.consumer_lag.labels(part.tp.topic, str(part.tp.partition)).set(
                max(0, end - offset)
            )

    def _report_progress(self, learned_before: int, seconds: float) -> int:
        progress = self.progress()
        learned = sum(p.events_learned for p in progress)
        if self._on_progress is not None:
            self._on_progress(progress, (learned - learned_before) / seconds)
        else:
            log.info(
                "progress",
                extra={
                    "fields": {
                        "events_learned": learned,
                        "events_per_s": round((learned - learned_before) / seconds, 1),
                        "models": summarize(progress),
                    }
                },
            )
        return learned

    def _forget_gauges(self, part: Partition) -> None:
        """Drop a departed partition's gauges: its new owner reports them now."""
        m = self._metrics
        tp = (part.tp.topic, str(part.tp.partition))
        with contextlib.suppress(KeyError):  # nothing was reported for it yet
            m.consumer_lag.remove(*tp)
        for spec in self._specs_by_topic.get(part.tp.topic, []):
            labels = (spec.name, *tp)
            for gauge in (m.checkpoint_size, m.checkpoint_time, m.checkpoint_interval):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            with contextlib.suppress(KeyError):
                m.pending_labels.remove(*labels)
            with contextlib.suppress(KeyError):
                m.realised_accuracy.remove(*labels)
            for window in ("latest", "labelled"):
                with contextlib.suppress(KeyError):
                    m.estimated_accuracy.remove(*labels, window)
            for signal in SIGNALS:
                for gauge in (m.signal, m.signal_threshold):
                    with contextlib.suppress(KeyError):
                        gauge.remove(*labels, signal)
            for shard in part.shards:
                if shard.spec.name == spec.name:
                    for signal, named in shard.alarm_features.items():
                        with contextlib.suppress(KeyError):
                            m.alarm_time.remove(*labels, signal, named)
            for name in spec.metrics:
                for window in ("cumulative", "rolling", "holdout"):
                    with contextlib.suppress(KeyError):
                        m.model_metric.remove(*labels, name, window)
                with contextlib.suppress(KeyError):
                    m.holdout_gap.remove(*labels, name)


def summarize(progress: Sequence[ShardProgress]) -> dict[str, dict[str, Any]]:
    """Per model: events learned and the primary metric, weighted by events learned."""
    by_model: dict[str, list[ShardProgress]] = {}
    for p in progress:
        by_model.setdefault(p.shard.model, []).append(p)
    return {
        model: {
            "events_learned": sum(p.events_learned for p in shards),
            "shards": len(shards),
            "metrics": combine_metrics([(p.metrics, p.events_learned) for p in shards]),
            "rolling_metrics": combine_metrics(
                [(p.rolling_metrics, p.events_learned) for p in shards]
            ),
        }
        for model, shards in by_model.items()
    }


def alarm_label(alarm: Mapping[str, Any]) -> str:
    """What a label-free alarm names, as one bounded label: the feature, feature=category,
    or prediction=class (prediction alone for the share of null predictions).

    >>> alarm_label({"feature": "c", "category": "unknown"}), alarm_label({"feature": "b"})
    ('c=unknown', 'b')
    >>> alarm_label({"feature": None, "category": "True"})
    'prediction=True'
    """
    feature = alarm.get("feature") or "prediction"
    category = alarm.get("category")
    return feature if category is None else f"{feature}={category}"


def _iso(ms: int | None) -> str | None:
    """An event time in milliseconds as ISO 8601 (UTC), None when unknown."""
    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def _growth(reported: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """How much each count grew since ``reported``, which then holds ``counts``. A count
    that fell (the learner went back to a checkpoint) is taken as the new base, unreported."""
    grown = {k: n - reported.get(k, 0) for k, n in counts.items() if n > reported.get(k, 0)}
    reported.update(counts)
    return grown
