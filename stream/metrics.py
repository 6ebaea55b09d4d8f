"""The worker's Prometheus metrics, all in one registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            "Dead letters not delivered after every retry, by source topic; the shard of "
            "each one's partition was stopped so that no checkpoint passes it.",
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
