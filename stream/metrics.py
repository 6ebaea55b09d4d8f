"""The worker's Prometheus metrics, all in one registry of their own.

`KafkaClientStats` exports librdkafka's own statistics (``kafka.client: confluent``) as
``livelearn_kafka_*``: per broker its state and round-trip time, per assigned partition its
fetch queue and its committed lag, and the consumer's totals. Its labels are bounded by the
cluster's brokers and the worker's assignment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1)
_CHECKPOINT_BUCKETS = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_CALLBACK_BUCKETS = (1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)


class WorkerMetrics:
    """Counters and gauges a worker exports; pass a fresh registry in tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "livelearn_events_total",
            "Events handled by a model shard, by outcome (learned: had a label; scored: no label).",
            ["model", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "livelearn_dead_letters_total",
            "Events sent to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.processing_errors = Counter(
            "livelearn_processing_errors_total",
            "Events a model shard raised on (sanitizing, predicting, scoring or learning), by "
            "what the events.on_processing_error policy did: dead_lettered or shard_stopped.",
            ["model", "outcome"],
            registry=r,
        )
        self.learn_seconds = Histogram(
            "livelearn_learn_seconds",
            "Time to predict, score and learn one event (the first of each poll batch).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "livelearn_consumer_lag_events",
            "Events between the worker's position and the partition's end.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_metric = Gauge(
            "livelearn_model_metric",
            "A model shard's quality metric, cumulative or over the rolling window.",
            ["model", "topic", "partition", "metric", "window"],
            registry=r,
        )
        self.drift = Counter(
            "livelearn_drift_detections_total",
            "Drift detections on a shard's error stream.",
            ["model", "topic", "partition"],
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "livelearn_checkpoint_seconds",
            "Time to snapshot, sign and write one shard's checkpoint.",
            ["model"],
            buckets=_CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoints = Counter(
            "livelearn_checkpoints_total",
            "Checkpoints written, by what triggered them.",
            ["model", "trigger"],
            registry=r,
        )
        self.unreplicated = Counter(
            "livelearn_checkpoint_unreplicated_total",
            "Checkpoints written that fewer replicas than redis.wait_replicas acknowledged "
            "within redis.wait_timeout_ms; the partition's offset commit waits meanwhile.",
            ["model"],
            registry=r,
        )
        self.checkpoint_size = Gauge(
            "livelearn_checkpoint_size_bytes",
            "Size of a shard's last snapshot.",
            ["model", "topic", "partition"],
            registry=r,
        )
        self.checkpoint_time = Gauge(
            "livelearn_checkpoint_timestamp_seconds",
            "Unix time of a shard's last checkpoint (age = time() - this).",
            ["model", "topic", "partition"],
            registry=r,
        )
        self.checkpoint_interval = Gauge(
            "livelearn_checkpoint_interval_seconds",
            "Wall time between a shard's last two checkpoints: its cadence as it is, "
            "stretched past checkpoint.every_seconds when checkpoints take more than "
            "checkpoint.max_share of the learning thread.",
            ["model", "topic", "partition"],
            registry=r,
        )
        self.snapshots_refused = Counter(
            "livelearn_snapshots_refused_total",
            "Snapshots refused on restore because their signature did not verify.",
            ["model"],
            registry=r,
        )
        self.spec_mismatches = Counter(
            "livelearn_spec_mismatch_total",
            "Shards refused on restore because the configured spec changes what the "
            "checkpointed model learns (see `livelearn models reset`).",
            ["model"],
            registry=r,
        )
        self.stale_epochs = Counter(
            "livelearn_stale_epoch_total",
            "Shards whose fencing epoch is no longer theirs (a checkpoint write refused, or "
            "seen by the periodic check): claimed by another worker, bumped by a model "
            "reset, or lost by Redis. The shard is re-claimed or goes back to the group.",
            ["model"],
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "livelearn_dead_letter_failures_total",
            "Dead letters not acknowledged after every retry of a flush, by source topic; "
            "each one's partition is paused, not checkpointed past it, until it is.",
            ["topic"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "livelearn_assigned_partitions",
            "Partitions assigned to this worker.",
            registry=r,
        )
        self.rebalance_callback_seconds = Histogram(
            "livelearn_rebalance_callback_seconds",
            "Time spent in a rebalance callback (assigned, revoked): it only records the "
            "partitions; claims, restores and saves run in the worker loop afterwards.",
            ["callback"],
            buckets=_CALLBACK_BUCKETS,
            registry=r,
        )
        self.dependency_up = Gauge(
            "livelearn_dependency_up",
            "1 while the dependency (kafka, redis) answers, 0 while the worker rides out its "
            "outage; past outage.timeout_s the worker exits 69 for its supervisor to restart.",
            ["dependency"],
            registry=r,
        )
        self.holdout_gap = Gauge(
            "livelearn_holdout_gap_metric",
            "Progressive minus holdout value of each metric (spec holdout), signed so that "
            "a positive gap means the progressive figure looks better than the holdout's.",
            ["model", "topic", "partition", "metric"],
            registry=r,
        )
        self.signal = Gauge(
            "livelearn_label_free_signal_metric",
            "Label-free signals of the last finished monitor window, per shard: the score "
            "(a z-score) of each signal's test nearest its threshold: prediction_shift, "
            "prediction_collapse, null_predictions, feature_shift, feature_spread, "
            "feature_set, category_shift (see the spec's monitor).",
            ["model", "topic", "partition", "signal"],
            registry=r,
        )
        self.signal_threshold = Gauge(
            "livelearn_label_free_threshold_metric",
            "The threshold of that test, from the monitor's false-alarm budget "
            "(monitor.expected_events_between_false_alarms) and its warm-up.",
            ["model", "topic", "partition", "signal"],
            registry=r,
        )
        self.alarms = Counter(
            "livelearn_label_free_alarms",
            "Monitor windows whose label-free signal passed its threshold.",
            ["model", "signal"],
            registry=r,
        )
        self.alarm_time = Gauge(
            "livelearn_label_free_alarm_timestamp_seconds",
            "Unix time the worker reported a shard's last alarm of a signal, labelled with "
            "what that alarm names: a feature, feature=category, or prediction=class. One "
            "series per shard and signal (the last alarm's).",
            ["model", "topic", "partition", "signal", "feature"],
            registry=r,
        )
        self.estimated_accuracy = Gauge(
            "livelearn_estimated_accuracy_ratio",
            "A classifier's accuracy estimated from its calibrated confidence (delayed_labels "
            "models), per monitor window of predictions: window=latest is the newest closed "
            "window, labels or not; window=labelled the newest whose labels all came (joined "
            "or expired), beside livelearn_realised_accuracy_ratio for the same predictions.",
            ["model", "topic", "partition", "window"],
            registry=r,
        )
        self.realised_accuracy = Gauge(
            "livelearn_realised_accuracy_ratio",
            "The accuracy the joined labels realised for the newest labelled window (see "
            'livelearn_estimated_accuracy_ratio{window="labelled"}).',
            ["model", "topic", "partition"],
            registry=r,
        )
        self.labels = Counter(
            "livelearn_labels",
            "Predictions awaiting a delayed label that were joined to it, or expired without "
            "it (delayed_labels.max_pending, max_age_s); labels that join nothing are dead "
            "letters (label_unmatched, label_duplicate, label_late).",
            ["model", "outcome"],
            registry=r,
        )
        self.label_delay = Histogram(
            "livelearn_label_delay_seconds",
            "Event time from a prediction to its delayed label.",
            ["model"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400),
            registry=r,
        )
        self.pending_labels = Gauge(
            "livelearn_pending_label_events",
            "Predictions awaiting their delayed label, per shard.",
            ["model", "topic", "partition"],
            registry=r,
        )
        self.labels_forwarded = Counter(
            "livelearn_labels_forwarded_total",
            "Records of a separate label topic (delayed_labels.topic), by what the label "
            "router did: forwarded to the model's topic, or dead_lettered.",
            ["topic", "outcome"],
            registry=r,
        )
        self.label_router_errors = Counter(
            "livelearn_label_router_errors_total",
            "Failures of the label router; the batch was aborted and is forwarded again.",
            registry=r,
        )
        self.last_poll = Gauge(
            "livelearn_last_poll_timestamp_seconds",
            "Unix time the worker loop last polled Kafka.",
            registry=r,
        )
        self.kafka = KafkaClientStats()
        r.register(self.kafka)


@dataclass(frozen=True)
class _Broker:
    node: str
    up: bool
    rtt_avg_s: float | None
    rtt_p99_s: float | None


@dataclass(frozen=True)
class _Partition:
    topic: str
    partition: str
    fetch_queue_events: int
    fetch_queue_bytes: int
    committed_lag: int | None


@dataclass(frozen=True)
class _Report:
    """The part of one librdkafka statistics report that is exported."""

    at: float
    brokers: tuple[_Broker, ...]
    partitions: tuple[_Partition, ...]
    received_events: int
    received_bytes: int
    rebalances: int | None


def _read_report(stats: Mapping[str, Any], at: float) -> _Report:
    """The exported part of a librdkafka statistics report (see librdkafka's
    STATISTICS.md): the brokers the cluster named (not the bootstrap addresses nor the
    coordinator's logical entry, nodeid -1), and the partitions this member fetches."""
    brokers = []
    for b in stats.get("brokers", {}).values():
        node = int(b.get("nodeid", -1))
        if node < 0:
            continue
        rtt = b.get("rtt") or {}
        seen = int(rtt.get("cnt", 0)) > 0  # no request answered in the window: unknown
        brokers.append(
            _Broker(
                str(node),
                b.get("state") == "UP",
                rtt["avg"] / 1e6 if seen else None,
                rtt["p99"] / 1e6 if seen else None,
            )
        )
    partitions = []
    for topic, t in stats.get("topics", {}).items():
        for number, part in t.get("partitions", {}).items():
            if int(number) < 0 or not part.get("desired"):  # librdkafka's internal -1
                continue
            lag = int(part.get("consumer_lag", -1))
            partitions.append(
                _Partition(
                    topic,
                    str(int(number)),
                    int(part.get("fetchq_cnt", 0)),
                    int(part.get("fetchq_size", 0)),
                    lag if lag >= 0 else None,
                )
            )
    group = stats.get("cgrp")
    return _Report(
        at,
        tuple(sorted(brokers, key=lambda b: b.node)),
        tuple(sorted(partitions, key=lambda p: (p.topic, int(p.partition)))),
        int(stats.get("rxmsgs", 0)),
        int(stats.get("rxmsg_bytes", 0)),
        int(group["rebalance_cnt"]) if group and "rebalance_cnt" in group else None,
    )


class KafkaClientStats(Collector):
    """librdkafka's statistics as ``livelearn_kafka_*`` metrics, from its last report.

    `update` takes each report (``stats_cb``'s JSON, parsed) on the consumer's thread; a
    scrape reads the last one. A worker without librdkafka never reports, and its families
    stay empty. The totals are the consumer's own: they start again from zero when the
    worker replaces its consumer, which Prometheus' ``rate()`` reads as a counter reset.

    >>> registry = CollectorRegistry()
    >>> stats = KafkaClientStats(clock=lambda: 10.0)
    >>> registry.register(stats)
    >>> stats.update({
    ...     "rxmsgs": 3, "rxmsg_bytes": 900, "cgrp": {"rebalance_cnt": 1},
    ...     "brokers": {"k:9092/1": {"nodeid": 1, "state": "UP",
    ...                              "rtt": {"cnt": 4, "avg": 1500, "p99": 4000}}},
    ...     "topics": {"t": {"partitions": {
    ...         "0": {"desired": True, "fetchq_cnt": 7, "fetchq_size": 2100, "consumer_lag": 9},
    ...         "-1": {"desired": False}}}},
    ... })
    >>> registry.get_sample_value(
    ...     "livelearn_kafka_fetch_queue_events", {"topic": "t", "partition": "0"})
    7.0
    >>> registry.get_sample_value(
    ...     "livelearn_kafka_broker_rtt_seconds", {"broker": "1", "statistic": "p99"})
    0.004
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._report: _Report | None = None
        self._lock = threading.Lock()

    def update(self, stats: Mapping[str, Any]) -> None:
        """Take one statistics report; one that cannot be read raises (ValueError,
        KeyError, TypeError, AttributeError) and leaves the last one in place."""
        report = _read_report(stats, self._clock())
        with self._lock:
            self._report = report

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            report = self._report
        up = GaugeMetricFamily(
            "livelearn_kafka_broker_up",
            "1 while librdkafka's connection to the broker is up (kafka.client: confluent).",
            labels=["broker"],
        )
        rtt = GaugeMetricFamily(
            "livelearn_kafka_broker_rtt_seconds",
            "Round-trip time of requests to the broker over librdkafka's last statistics "
            "window, its mean (avg) and 99th percentile (p99).",
            labels=["broker", "statistic"],
        )
        queued = GaugeMetricFamily(
            "livelearn_kafka_fetch_queue_events",
            "Records librdkafka has fetched for the partition that the worker has not taken "
            "yet (kafka.queued_min_messages, kafka.queued_max_messages_kbytes bound them).",
            labels=["topic", "partition"],
        )
        queued_bytes = GaugeMetricFamily(
            "livelearn_kafka_fetch_queue_bytes",
            "Bytes of the records in the partition's fetch queue.",
            labels=["topic", "partition"],
        )
        lag = GaugeMetricFamily(
            "livelearn_kafka_consumer_lag_events",
            "Records between the group's committed offset of the partition and its end, as "
            "librdkafka sees them (committed after each checkpoint; livelearn_consumer_lag_"
            "events counts from the worker's own position).",
            labels=["topic", "partition"],
        )
        received = CounterMetricFamily(
            "livelearn_kafka_received_events",
            "Records the consumer has fetched since it was made.",
        )
        received_bytes = CounterMetricFamily(
            "livelearn_kafka_received_bytes",
            "Bytes of the records the consumer has fetched since it was made.",
        )
        rebalances = CounterMetricFamily(
            "livelearn_kafka_rebalances",
            "Rebalances (assignments and revocations) the consumer has been through.",
        )
        age = GaugeMetricFamily(
            "livelearn_kafka_statistics_age_seconds",
            "Seconds since librdkafka's last statistics report (one a second while it runs).",
        )
        if report is not None:
            for b in report.brokers:
                up.add_metric([b.node], 1.0 if b.up else 0.0)
                if b.rtt_avg_s is not None and b.rtt_p99_s is not None:
                    rtt.add_metric([b.node, "avg"], b.rtt_avg_s)
                    rtt.add_metric([b.node, "p99"], b.rtt_p99_s)
            for p in report.partitions:
                queued.add_metric([p.topic, p.partition], float(p.fetch_queue_events))
                queued_bytes.add_metric([p.topic, p.partition], float(p.fetch_queue_bytes))
                if p.committed_lag is not None:
                    lag.add_metric([p.topic, p.partition], float(p.committed_lag))
            received.add_metric([], float(report.received_events))
            received_bytes.add_metric([], float(report.received_bytes))
            if report.rebalances is not None:
                rebalances.add_metric([], float(report.rebalances))
            age.add_metric([], max(0.0, self._clock() - report.at))
        yield from (up, rtt, queued, queued_bytes, lag, received, received_bytes, rebalances, age)
