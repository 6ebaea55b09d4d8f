"""Every Prometheus metric of the serving side (lookup client and HTTP API), in one registry."""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["REJECT_REASONS", "RejectReason", "ServingMetrics"]

# Request buckets span an in-process lookup to a large batch over HTTP; lookup buckets, a
# one-shard prediction to a large ensemble (bench/bench_lookup.py and bench/bench_api.py
# show where the real figures fall).
_REQUEST_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LOOKUP_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1)
# A reload reads, verifies and unpickles a snapshot: a small linear model to a large forest
# (bench/bench_api_load.py shows where a growing tree falls).
_RELOAD_BUCKETS = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

RELOAD_REASONS = ("announce", "poll", "initial", "pin")

# Why the API refused a request, or closed a connection, before any prediction:
# 413 body_too_large; 408 body_timeout, header_timeout (or closed without an answer:
# idle_timeout, and body_timeout for the rest of a body already answered);
# 499 client_disconnected (the client left before its body was in); 431 headers_too_large;
# 400 bad_http (not HTTP); 503 over_capacity (serving.max_connections, when no connection
# can make room for a new one, or that many requests are in progress); for a connection as
# it opens, 503 too_many_connections (serving.max_connections_per_client), and evicted for
# one closed to make room for it (503 when it had begun a request's head); and 422 for a body
# that is not_json, has a bad_encoding (not UTF-8, a lone surrogate), nests too_deep, has a
# number with too_many_digits, too_many_events or too_many_features, is an invalid_body
# for the schema, or has invalid_features for the model.
RejectReason = Literal[
    "body_too_large",
    "body_timeout",
    "header_timeout",
    "idle_timeout",
    "client_disconnected",
    "headers_too_large",
    "bad_http",
    "over_capacity",
    "too_many_connections",
    "evicted",
    "not_json",
    "bad_encoding",
    "too_deep",
    "too_many_digits",
    "too_many_events",
    "too_many_features",
    "invalid_body",
    "invalid_features",
]
REJECT_REASONS: tuple[RejectReason, ...] = RejectReason.__args__  # type: ignore[attr-defined]


class ServingMetrics:
    """Counters, gauges and histograms the lookup and the API export; pass a fresh registry in
    tests.

    ``predictions`` is counted by ``Lookup`` (one per prediction, in-process or over HTTP);
    ``requests``, ``rejected`` and ``request_seconds`` by the API (``rejected`` also by its
    server, for connections closed before a request was complete).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "livelearn_api_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "livelearn_api_rejected_total",
            "Requests and connections refused before a prediction, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:  # every reason shows, at 0 until it happens
            self.rejected.labels(reason)
        self.request_seconds = Histogram(
            "livelearn_api_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "livelearn_predictions_total",
            "Predictions made (one per event in a batch), by model.",
            ["model"],
            registry=r,
        )
        self.freshness = Gauge(
            "livelearn_model_freshness_seconds",
            "Age of the newest checkpoint the served model state comes from (NaN: none loaded).",
            ["model"],
            registry=r,
        )
        self.release_metric = Gauge(
            "livelearn_release_reference_metric",
            "Metrics of the release a model serves (pinned), weighted over its shards: the "
            "reference the live model's rolling metrics are compared with; EstimatedAccuracy: "
            "the accuracy its shards estimated from their confidence when it was made, the "
            "reference of livelearn_estimated_accuracy_ratio.",
            ["model", "release", "metric"],
            registry=r,
        )
        self.snapshots_refused = Counter(
            "livelearn_serving_snapshots_refused_total",
            "Snapshots serving refused to load (bad signature or unloadable), by model.",
            ["model"],
            registry=r,
        )
        self.reloads = Counter(
            "livelearn_serving_reloads_total",
            "Model state reloads, by what triggered them (announce, poll, initial, pin).",
            ["model", "reason"],
            registry=r,
        )
        self.reload_seconds = Histogram(
            "livelearn_serving_reload_seconds",
            "Time of a reload that changed the served state (Redis reads, signature checks, "
            "unpickling), by model; spent in the lookup's background thread.",
            ["model"],
            buckets=_RELOAD_BUCKETS,
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "livelearn_lookup_seconds",
            "Time of one in-process prediction (sampled 1 in 16).",
            ["model"],
            buckets=_LOOKUP_BUCKETS,
            registry=r,
        )
