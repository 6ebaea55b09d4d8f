"""Worker throughput against River's own loop and the worker's peers, on the same events.

For each model, every case learns the same Phishing events (JSON) from the same
one-partition topic, test-then-train (``predict_one``, the metric, ``learn_one``):

- River's loop: the events already decoded in memory, Accuracy, no Kafka;
- the peers, each with its library's defaults (bench/_peers.py): a kafka-python loop, a
  confluent-kafka loop (``consume(batch)`` and orjson), a quixstreams Application and a
  bytewax dataflow, Accuracy alone;
- the livelearn worker with the spec's defaults (its default metrics, drift detector,
  label-free monitor, rolling metrics and checkpoint cadence), and with the peers' work:
  Accuracy alone, drift and monitor off (rolling metrics cannot be turned off, and
  checkpoints keep the spec's cadence).

Each rate counts from the first event handled to the last; for the worker, from the end
of its first batch (the events after it are counted) to the checkpoint that holds the last
event. Connecting, joining a group and closing are left out of every case alike.

Rounds interleave: each round runs every case once, in the same order. The table gives
each case's median rate and its spread over the rounds, its ratio to River's loop (each
round's rate over River's loop's rate in that round, the median of those) and its ratio to
the best peer's median. ARFClassifier's ten trees learn far slower than the other models,
so it runs on fewer events (``--arf-events``).

``python -m bench worker [--rounds 3] [--events 50000] [--arf-events 10000]
[--models linear tree arf]``; e.g. ``python -m bench worker --rounds 1 --events 20000``
for a quick run.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaProducer
from river import datasets

from bench import _peers
from bench._report import best_peer, format_table, summarize
from livelearn.learners import ModelSpec
from livelearn.settings import KafkaClient, KafkaSettings, TopicSettings, load_settings
from livelearn.stream.app import build_worker, ensure_topics
from livelearn.stream.fetcher import KafkaRecord
from livelearn.stream.worker import Partition, Shard

_KAFKA = KafkaSettings()  # the defaults

SPECS: dict[str, dict[str, Any]] = {
    "StandardScaler|LogisticRegression": {
        "task": "binary",
        "pipeline": [
            {"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LogisticRegression"},
        ],
        "metrics": ["Accuracy"],
    },
    "HoeffdingTreeClassifier": {
        "task": "binary",
        "pipeline": [{"class": "tree.HoeffdingTreeClassifier"}],
        "metrics": ["Accuracy"],
    },
}
ARF = "ARFClassifier(n_models=10)"
# The models by their --models names, each as its label and spec body. ARF draws at random:
# seeded, every case learns the same forest, at the same cost.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("StandardScaler|LogisticRegression", SPECS["StandardScaler|LogisticRegression"]),
    "tree": ("HoeffdingTreeClassifier", SPECS["HoeffdingTreeClassifier"]),
    "arf": (
        ARF,
        {
            "task": "binary",
            "pipeline": [{"class": "forest.ARFClassifier", "params": {"n_models": 10, "seed": 42}}],
            "metrics": ["Accuracy"],
        },
    ),
}


@dataclass(frozen=True)
class Workload:
    """One model and its events on their topic: what each case of a round learns."""

    label: str
    body: dict[str, Any]
    topic: str
    values: list[bytes]
    bootstrap: str
    redis_url: str

    @property
    def n(self) -> int:
        """How many events the topic holds."""
        return len(self.values)

    def spec(self) -> ModelSpec:
        """The model spec the peers build their model and metric from."""
        return _spec("bench", self.topic, self.body)


def _events(n: int) -> list[bytes]:
    rows = list(datasets.Phishing())
    out = []
    for i in range(n):
        x, y = rows[i % len(rows)]
        out.append(orjson.dumps({"id": f"e{i}", "ts": i, "key": None, "features": x, "label": y}))
    return out


def _spec(name: str, topic: str, body: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate({"name": name, "topics": [topic], **body})


def services() -> tuple[str, str]:
    """Kafka and Redis from the environment, else the local stack (started if needed)."""
    bootstrap = os.environ.get("LIVELEARN_KAFKA__BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("LIVELEARN_REDIS__URL")
    if not bootstrap or not redis_url:
        from livelearn.devtools import stack

        info = stack.up()
        bootstrap, redis_url = info.bootstrap_servers, info.redis_url
    return bootstrap, redis_url


def topic_with(bootstrap: str, values: list[bytes], partitions: int = 1) -> str:
    """A new topic of ``partitions`` holding ``values``, value i in partition i % partitions."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: partitions}, TopicSettings())
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for i, value in enumerate(values):
        producer.send(topic, value, partition=i % partitions)
    producer.flush()
    producer.close()
    return topic


def river_loop(spec: ModelSpec, values: list[bytes]) -> float:
    """River's own loop on events already decoded in memory; events/s."""
    data = [orjson.loads(v) for v in values]
    data = [(e["features"], e["label"]) for e in data]
    model = spec.build_pipeline()
    metric = spec.build_metrics()[0]
    started = time.perf_counter()
    for x, y in data:
        y_pred = model.predict_one(x)
        if y_pred is not None:
            metric.update(y, y_pred)
        model.learn_one(x, y)
    return len(data) / (time.perf_counter() - started)


def livelearn_worker(
    bootstrap: str,
    redis_url: str,
    topic: str,
    body: dict[str, Any],
    n: int,
    client: KafkaClient = _KAFKA.client,
) -> float:
    """The livelearn worker end to end, in a group of its own; events/s.

    Decoding, validation, the spec's metrics, drift detector and monitor, checkpoints at
    the spec's cadence and offset commits, with the default settings. The clock starts
    once the first batch is learned, and counts the events after it; it stops at the
    checkpoint that holds the ``n``-th event. ``client`` is ``kafka.client``, the consumer
    backend.
    """
    name = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("LIVELEARN_SECURITY__SNAPSHOT_KEY", uuid.uuid4().hex * 2)
    os.environ.setdefault("LIVELEARN_SECURITY__HASH_KEY", uuid.uuid4().hex * 2)
    settings = load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": name, "client": client},
        redis={"url": redis_url, "key_prefix": name},
        log={"level": "WARNING", "format": "text", "progress_seconds": 3600},
        models=[{"name": name, "topics": [topic], **body}],
    )
    shards: list[Shard] = []
    started, counted_from, saved = 0.0, 0, 0.0

    def on_batch(part: Partition, records: list[KafkaRecord]) -> None:
        nonlocal started, counted_from, saved
        shard = part.shards[0]
        if not shards:
            shards.append(shard)
            started, counted_from = time.monotonic(), shard.next_offset
        if shard.next_offset >= n:
            if shard.checkpointed_offset >= n:  # written within the batch
                saved = shard.last_checkpoint
            proc.worker.stop()  # the worker checkpoints every shard as it stops

    proc = build_worker(settings, serve_http=False, on_batch=on_batch)
    proc.run(install_signals=False)
    if not shards or shards[0].checkpointed_offset != n:
        offset = shards[0].checkpointed_offset if shards else None
        raise RuntimeError(f"the worker stopped with its checkpoint at {offset}, not at {n}")
    if counted_from >= n:
        raise RuntimeError(f"the worker's first batch held all {n} events: give it more events")
    return (n - counted_from) / ((saved or shards[0].last_checkpoint) - started)


def _same_work(body: dict[str, Any]) -> dict[str, Any]:
    """The spec doing the peers' work: Accuracy alone, no drift detector, no monitor."""
    return {**body, "metrics": ["Accuracy"], "drift": None, "monitor": None}


def _spec_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """The spec as a user writes it first: the task and the pipeline, defaults otherwise."""
    return {"task": body["task"], "pipeline": body["pipeline"]}


Case = Callable[[Workload], float]


def _peer(run: Callable[[str, str, ModelSpec, int], float]) -> Case:
    return lambda w: run(w.bootstrap, w.topic, w.spec(), w.n)


def _worker(
    spec_body: Callable[[dict[str, Any]], dict[str, Any]], client: KafkaClient = _KAFKA.client
) -> Case:
    return lambda w: livelearn_worker(
        w.bootstrap, w.redis_url, w.topic, spec_body(w.body), w.n, client
    )


RIVER = "River loop (in memory)"
PEERS: dict[str, Case] = {
    "kafka-python loop": _peer(_peers.kafka_python_loop),
    "confluent-kafka loop": _peer(_peers.confluent_loop),
    "quixstreams app": _peer(_peers.quixstreams_app),
    "bytewax flow": _peer(_peers.bytewax_flow),
}
CASES: dict[str, Case] = {
    RIVER: lambda w: river_loop(w.spec(), w.values),
    **PEERS,
    "livelearn worker, spec defaults": _worker(_spec_defaults),
    "livelearn worker, peers' work": _worker(_same_work),
    "livelearn worker, peers' work, confluent": _worker(_same_work, "confluent"),
}


def measure(workload: Workload, rounds: int) -> dict[str, list[float]]:
    """Every case's rate in each round, a progress line a case."""
    rates: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(rounds):
        for case, run in CASES.items():
            rate = run(workload)
            rates[case].append(rate)
            print(
                f"  round {r + 1}/{rounds}  {workload.label}  {case}: {rate:,.0f} events/s",
                flush=True,
            )
    return rates


def _rounds(n: int) -> str:
    return "1 round" if n == 1 else f"{n} rounds"


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _notes(events: int, arf_events: int, models: Sequence[str]) -> str:
    defaults = _spec("bench", "t", _spec_defaults(MODELS["linear"][1]))
    drift = defaults.drift.class_ if defaults.drift is not None else "none"
    cadence = defaults.checkpoint
    lines = [
        "*: the best peer. x river: each round's rate over River's loop's rate in that round,",
        "the median over rounds. x best peer: the median over the best peer's median.",
        f"livelearn, spec defaults: metrics {', '.join(defaults.metrics)}, drift detector "
        f"{drift}, monitor on,",
        f"rolling metrics over {defaults.rolling_window:,} events. livelearn, peers' work: "
        "metrics Accuracy, no drift",
        "detector, monitor off (rolling metrics cannot be turned off). Both checkpoint every "
        f"{cadence.every_events:,}",
        f"events or {cadence.every_seconds:g} s and as they stop, and time the events after "
        "their first batch (at most",
        f"kafka.max_poll_records = {KafkaSettings().max_poll_records:,}).",
    ]
    if "arf" in models:
        lines.append(
            f"{ARF} ran on {arf_events:,} events (--arf-events), the others on {events:,}."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--events", type=int, default=50_000, help="events a model (default 50,000)"
    )
    parser.add_argument(
        "--arf-events", type=int, default=10_000, help=f"events for {ARF} (default 10,000)"
    )
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to run"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.events < 1 or args.arf_events < 1:
        parser.error("--rounds, --events and --arf-events take positive numbers")
    bootstrap, redis_url = services()
    counts = {m: args.arf_events if m == "arf" else args.events for m in args.models}
    topics: dict[int, tuple[str, list[bytes]]] = {}
    for n in sorted(set(counts.values())):
        values = _events(n)
        topics[n] = (topic_with(bootstrap, values), values)
    print(
        f"worker throughput: {len(CASES)} cases on the same Phishing events, one partition, "
        f"{_rounds(args.rounds)} (load average {_load()})\n",
        flush=True,
    )
    tables = []
    for m in args.models:
        label, body = MODELS[m]
        topic, values = topics[counts[m]]
        workload = Workload(label, body, topic, values, bootstrap, redis_url)
        print(f"{label}, {workload.n:,} events:", flush=True)
        rates = measure(workload, args.rounds)
        best = best_peer(rates, list(PEERS))
        table = format_table(summarize(rates, RIVER, list(PEERS)), best)
        tables.append(f"{label}, {workload.n:,} events, {_rounds(args.rounds)}\n{table}")
        print(f"\n{tables[-1]}\n", flush=True)
    if len(tables) > 1:
        print("all models:\n\n" + "\n\n".join(tables) + "\n")
    print(_notes(args.events, args.arf_events, args.models))
    print(f"(load average at the end {_load()})")


if __name__ == "__main__":
    main()
