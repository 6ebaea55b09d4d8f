"""``livelearn models list|show``: shard state read from Redis, nothing unpickled.

With the snapshot keys at hand, ``show`` verifies each shard's signature and binding and
reports the key id from the signed header (else the key id the store records).
"""

from __future__ import annotations

import time
from typing import Any

from livelearn.errors import SnapshotError
from livelearn.learners import SnapshotCodec
from livelearn.store.checkpoints import RedisCheckpointStore


def describe_model(
    store: RedisCheckpointStore, model: str, codec: SnapshotCodec | None = None
) -> dict[str, Any]:
    """A model's shards as JSON-ready rows (the README documents the keys); with ``codec``
    each shard's signature is verified (``signature``: ``ok`` or why it is refused)."""
    now = time.time()
    shards = []
    for shard in store.shards(model):
        row = store.describe(shard)
        if row is None:
            continue
        signature = None
        if codec is not None:
            checkpoint = store.load(shard)
            if checkpoint is None:
                continue
            try:
                header = codec.header(checkpoint.blob, checkpoint.binding())
                row["kid"], signature = header["kid"], "ok"
            except SnapshotError as exc:
                signature = f"refused: {exc}"
        stats = row["stats"]
        shards.append(
            {
                "topic": shard.topic,
                "partition": shard.partition,
                "next_offset": row["next_offset"],
                "events_learned": stats.get("events_learned", 0),
                "events_scored": stats.get("events_scored", 0),
                "metrics": stats.get("metrics", {}),
                "rolling_metrics": stats.get("rolling_metrics", {}),
                "drift_detections": stats.get("drift_detections", 0),
                "drift_offsets": stats.get("drift_offsets", []),
                "estimate": stats.get("estimate"),
                "epoch": row["epoch"],
                "version": row["version"],
                "key_id": row["kid"] or None,
                "signature": signature,
                "snapshot_bytes": row["size"],
                "updated_at": row["updated_at"],
                "age_seconds": round(now - row["updated_at"], 3),
            }
        )
    return {
        "model": model,
        "events_learned": sum(s["events_learned"] for s in shards),
        "events_scored": sum(s["events_scored"] for s in shards),
        "shards": shards,
    }


def format_model(desc: dict[str, Any]) -> str:
    """A model's description as an aligned table."""
    head = (
        f"model {desc['model']}: {desc['events_learned']} events learned, "
        f"{desc['events_scored']} scored, {len(desc['shards'])} shard(s)"
    )
    cols = [
        "topic",
        "part",
        "next_offset",
        "learned",
        "scored",
        "drift",
        "epoch",
        "version",
        "key_id",
        "bytes",
        "age_s",
    ]
    rows = [cols]
    metric_lines = []
    for s in desc["shards"]:
        rows.append(
            [
                s["topic"],
                str(s["partition"]),
                str(s["next_offset"]),
                str(s["events_learned"]),
                str(s["events_scored"]),
                str(s["drift_detections"]),
                str(s["epoch"]),
                str(s["version"]),
                s["key_id"] or "-",
                str(s["snapshot_bytes"]),
                f"{s['age_seconds']:.1f}",
            ]
        )
        metrics = ", ".join(
            f"{k}={_num(v)} (rolling {_num(s['rolling_metrics'].get(k))})"
            for k, v in s["metrics"].items()
        )
        metric_lines.append(f"  {s['topic']}/{s['partition']}: {metrics}")
        if s.get("estimate"):
            metric_lines.append(f"  {s['topic']}/{s['partition']}: {_estimate_line(s['estimate'])}")
        if s.get("signature") not in (None, "ok"):
            metric_lines.append(f"  {s['topic']}/{s['partition']}: {s['signature']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    table = ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([head, *table, "metrics:", *metric_lines])


def _estimate_line(estimate: dict[str, Any]) -> str:
    """A shard's accuracy estimated from its confidence: the newest window's, and the
    newest labelled window's beside its realised accuracy.

    >>> _estimate_line({"latest": {"index": 7, "first_offset": 7000, "last_offset": 7999,
    ...     "estimated": 0.9}, "labelled": {"index": 5, "estimated": 0.91, "realised": 0.9},
    ...     "reference": 0.92}).split("; ")[1:]
    ['labelled window 5: estimated 0.9100, realised 0.9000', 'reference 0.9200']
    """
    latest, labelled = estimate.get("latest"), estimate.get("labelled")
    parts = [
        "estimated accuracy -"
        if latest is None
        else f"estimated accuracy {_num(latest['estimated'])} (window {latest['index']}, "
        f"offsets {latest['first_offset']}-{latest['last_offset']})"
    ]
    if labelled is not None:
        parts.append(
            f"labelled window {labelled['index']}: estimated {_num(labelled['estimated'])}, "
            f"realised {_num(labelled['realised'])}"
        )
    parts.append(f"reference {_num(estimate.get('reference'))}")
    return "; ".join(parts)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
