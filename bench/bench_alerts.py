"""False alarms on stationary data, through the worker and a real Prometheus (issue 20).

Three stationary streams (bench/bench_monitor.py's: River's Phishing repeated, Agrawal,
and a stream of string categories with numeric features), ``--events`` events each, each
on a topic of its own, are learned by one ``livelearn worker`` process, each by a linear
model and a tree with the spec defaults (ADWIN with its one-sided confirmation, the
label-free monitor with its default windows and false-alarm budget). A real Prometheus
(devtools/prometheus.py; Debian's ``prometheus``) scrapes the worker every ``--interval``
seconds and evaluates config/alerts.yml as written.

For each model it reports the raw detections, counted from the worker's metrics as
Prometheus last scraped them (``livelearn_label_free_alarms_total`` by signal,
``livelearn_drift_detections_total``) and checked against the checkpoint's own counts,
and the alerts that reached ``firing`` (and those only ever pending), each also per
million events. The worker's own alerts (no model label) are reported apart.

``python -m bench alerts [--events 1000000] [--datasets phishing agrawal categories]
[--models linear tree] [--interval 1.0] [--linger 420]``; the defaults are the full run
(six million model-events), and Prometheus keeps evaluating for ``--linger`` seconds after
the last event is learned, so that an alert on streams that stop has the time to fire.
Kafka and Redis: from ``LIVELEARN_KAFKA__BOOTSTRAP_SERVERS`` and ``LIVELEARN_REDIS__URL``,
else the local stack.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml
from kafka import KafkaProducer

from bench.bench_api import secret_keys, stop
from bench.bench_monitor import DATASETS, MODELS, STREAMS, spec_body
from bench.bench_worker import services
from livelearn.devtools.prometheus import AlertWatch, LocalPrometheus
from livelearn.settings import TopicSettings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.stream.app import ensure_topics

BASE_MS = 1_700_000_000_000


def _worker_env(bootstrap: str, redis_url: str) -> dict[str, str]:
    """The worker's environment: the services, the keys, its HTTP port (a free one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    keys = secret_keys()
    return {
        **os.environ,
        "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LIVELEARN_REDIS__URL": redis_url,
        "LIVELEARN_SECURITY__SNAPSHOT_KEY": keys["snapshot_key"],
        "LIVELEARN_SECURITY__HASH_KEY": keys["hash_key"],
        "LIVELEARN_HTTP__PORT": str(port),
    }


def _produce(bootstrap: str, topic: str, dataset: str, events: int, failed: list[str]) -> None:
    """Send ``events`` contract events of ``dataset`` to ``topic``, one a millisecond of
    event time; a failure is recorded in ``failed`` (the main thread reports it)."""
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1
        )
        try:
            for offset, (x, y) in enumerate(STREAMS[dataset](events)):
                event = {"id": f"e{offset}", "ts": BASE_MS + offset, "features": x, "label": y}
                producer.send(topic, orjson.dumps(event), partition=0)
            producer.flush(timeout=120)
        finally:
            producer.close(timeout=30)
    except Exception as error:  # reported by the main thread, which stops the run
        failed.append(f"producing {dataset} to {topic}: {error!r}")


def _counts(prometheus: LocalPrometheus, metric: str, by: str) -> dict[tuple[str, ...], float]:
    result = prometheus.query(f"sum by ({by}) ({metric})")
    keys = by.split(", ")
    return {
        tuple(series["metric"].get(k, "") for k in keys): float(series["value"][1])
        for series in result
    }


def run(
    datasets: list[str], models: list[str], events: int, interval: float, linger: float
) -> dict[str, Any]:
    """One run; returns the report (also printed line by line as it goes)."""
    bootstrap, redis_url = services()
    tag = uuid.uuid4().hex[:8]
    topics = {d: f"bench-alerts-{tag}-{d}" for d in datasets}
    names = {(d, m): f"alerts-{tag}-{d}-{m}" for d in datasets for m in models}
    specs = [{**spec_body(d, m, topics[d]), "name": names[d, m]} for d, m in names]
    prefix = f"bench-alerts-{tag}"
    config = {
        "kafka": {"group_id": prefix},
        "redis": {"key_prefix": prefix},
        "log": {"level": "WARNING", "format": "json"},
        "models": specs,
    }
    workdir = Path(tempfile.mkdtemp(prefix="livelearn-bench-alerts-"))
    config_path = workdir / "livelearn.yaml"
    config_path.write_text(yaml.safe_dump(config))
    ensure_topics(bootstrap, {t: 1 for t in topics.values()}, TopicSettings())
    env = _worker_env(bootstrap, redis_url)
    client = redis.Redis.from_url(redis_url)
    store = RedisCheckpointStore(client, prefix)
    failed: list[str] = []
    producers = [
        threading.Thread(target=_produce, args=(bootstrap, topics[d], d, events, failed))
        for d in datasets
    ]
    cli = [sys.executable, "-m", "livelearn.cli.main", "--config", str(config_path), "worker"]
    log_path = workdir / "worker.log"
    print(f"bench alerts: {events} events x {len(names)} models, log in {workdir}", flush=True)
    with log_path.open("wb") as log:
        worker = subprocess.Popen(cli, env=env, stdout=log, stderr=subprocess.STDOUT)
    prometheus = LocalPrometheus(
        workdir / "prometheus", [f"127.0.0.1:{env['LIVELEARN_HTTP__PORT']}"], interval_s=interval
    )
    started = time.monotonic()
    try:
        with prometheus, AlertWatch(prometheus) as watch:
            for thread in producers:
                thread.start()
            _wait_learned(store, names, topics, events, worker, failed, started)
            seconds = time.monotonic() - started
            # The last checkpoints scraped and evaluated, and the rules that look back
            # minutes given the time to see the streams stop.
            time.sleep(3 * interval + linger)
            alarms = _counts(prometheus, "livelearn_label_free_alarms_total", "model, signal")
            drift = _counts(prometheus, "livelearn_drift_detections_total", "model")
        report = _report(names, topics, events, store, alarms, drift, watch.seen(), seconds)
    finally:
        stop(worker)
        for thread in producers:
            thread.join(timeout=60)
        client.close()
    for row in report["models"]:
        print(json.dumps(row), flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "models"}), flush=True)
    return report


def _wait_learned(
    store: RedisCheckpointStore,
    names: dict[tuple[str, str], str],
    topics: dict[str, str],
    events: int,
    worker: subprocess.Popen[bytes],
    failed: list[str],
    started: float,
) -> None:
    """Until every model's checkpoint holds all ``events``; progress every 30 s."""
    last_print = time.monotonic()
    while True:
        offsets = {}
        for (dataset, model), name in names.items():
            row = store.describe(ShardId(name, topics[dataset], 0))
            offsets[f"{dataset}-{model}"] = -1 if row is None else int(row["next_offset"])
        if all(offset >= events for offset in offsets.values()):
            return
        if failed:
            raise RuntimeError("; ".join(failed))
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        if time.monotonic() - last_print > 30:
            last_print = time.monotonic()
            elapsed = last_print - started
            print(f"  {elapsed:.0f} s: next offsets {offsets}", flush=True)
        time.sleep(1.0)


def _report(
    names: dict[tuple[str, str], str],
    topics: dict[str, str],
    events: int,
    store: RedisCheckpointStore,
    alarms: dict[tuple[str, ...], float],
    drift: dict[tuple[str, ...], float],
    alerts: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    per_million = 1e6 / events
    rows = []
    for (dataset, model), name in names.items():
        row = store.describe(ShardId(name, topics[dataset], 0))
        stats = {} if row is None else dict(row["stats"])
        by_signal = {s: int(n) for (m, s), n in alarms.items() if m == name}
        raw = sum(by_signal.values()) + int(drift.get((name,), 0))
        checkpointed = sum(stats.get("monitor", {}).get("alarms", {}).values()) + stats.get(
            "drift_detections", 0
        )
        mine = [a for a in alerts if a["labels"].get("model") == name]
        firing = [a["labels"] for a in mine if a["fired_at"] is not None]
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "events": events,
                "accuracy": (stats.get("metrics") or {}).get("Accuracy"),
                "label_free_alarms": by_signal,
                "drift_detections": int(drift.get((name,), 0)),
                "raw_detections": raw,
                "raw_per_million": round(raw * per_million, 2),
                "checkpoint_agrees": raw == checkpointed,
                "alerts_firing": len(firing),
                "alerts_firing_per_million": round(len(firing) * per_million, 2),
                "firing": firing,
                "pending_only": [a["labels"] for a in mine if a["fired_at"] is None],
            }
        )
    worker_alerts = [a for a in alerts if "model" not in a["labels"]]
    return {
        "models": rows,
        "events_per_model": events,
        "model_events": events * len(names),
        "seconds": round(seconds, 1),
        "alerts_firing_total": sum(r["alerts_firing"] for r in rows),
        "worker_alerts_firing": [a["labels"] for a in worker_alerts if a["fired_at"]],
        "worker_alerts_pending_only": [a["labels"] for a in worker_alerts if not a["fired_at"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench alerts", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument(
        "--linger",
        type=float,
        default=420.0,
        help="seconds Prometheus keeps evaluating after the last event is learned (the "
        "rules look back up to 5 minutes, and some wait 2 more before firing)",
    )
    args = parser.parse_args(argv)
    run(args.datasets, args.models, args.events, args.interval, args.linger)


if __name__ == "__main__":
    main()
