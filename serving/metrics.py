"""Every Prometheus metric of the serving side (lookup client and HTTP API), in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServingMetrics"]

# Request buckets span an in-process lookup to a large batch over HTTP; lookup buckets, a
# one-shard prediction to a large ensemble (bench/bench_lookup.py and bench/bench_api.py
# show where the real figures fall).
_REQUEST_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LOOKUP_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1)

RELOAD_REASONS = ("announce", "poll", "initial", "pin")


class ServingMetrics:
    """Counters, gauges and histograms the lookup and the API export; pass a fresh registry in
    tests.

    ``predictions`` is counted by ``Lookup`` (one per prediction, in-process or over HTTP);
    ``requests`` and ``request_seconds`` by the API.
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
        self.lookup_seconds = Histogram(
            "livelearn_lookup_seconds",
            "Time of one in-process prediction (sampled 1 in 16).",
            ["model"],
            buckets=_LOOKUP_BUCKETS,
            registry=r,
        )
