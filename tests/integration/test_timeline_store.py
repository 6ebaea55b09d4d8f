"""The model timeline on a real Redis server: appended by the checkpoint script itself,
so only what the store accepts is kept, once; capped; deleted with the model."""

from __future__ import annotations

import pytest
import redis

from livelearn import StaleEpochError, VersionConflict
from livelearn.serving.ui import StatusBoard
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.timeline import TimelineRead

pytestmark = pytest.mark.integration

ALARM = {
    "seq": 1,
    "signal": "feature_set",
    "feature": "hvalue",
    "category": None,
    "value": 9.5,
    "threshold": 4.1,
    "now": 0.0,
    "before": 1.0,
    "first_offset": 1000,
    "last_offset": 1999,
    "first_event_ms": 1_700_000_001_000,
    "last_event_ms": 1_700_000_001_999,
    "also": [],
}


def _stats(learned: int, alarms: list[dict] | None = None) -> dict:
    return {
        "events_learned": learned,
        "rolling_metrics": {"accuracy": 0.9},
        "drift_offsets": [],
        "monitor": {"signals": {"feature_set": 9.5}, "thresholds": {"feature_set": 4.1}},
        **({"monitor": {"alarm_log": alarms}} if alarms else {}),
    }


@pytest.fixture
def store(redis_client: redis.Redis, unique_name: str) -> RedisCheckpointStore:
    return RedisCheckpointStore(redis_client, prefix=unique_name)


def test_each_accepted_checkpoint_is_one_entry_and_a_refused_one_none(
    store, redis_client, unique_name
) -> None:
    shard = ShardId("m", "t", 0)
    old, _ = store.claim(shard)
    store.save(shard, old, b"a", 1000, _stats(1000), 1, event_ms=1_700_000_000_999, since=-1)
    new, _ = store.claim(shard)  # another owner
    with pytest.raises(StaleEpochError):  # the zombie's checkpoint: fenced, nothing kept
        store.save(shard, old, b"z", 2000, _stats(2000, [ALARM]), 2, since=1000)
    store.save(shard, new, b"b", 2000, _stats(2000, [ALARM]), 2, event_ms=5, since=1000)
    with pytest.raises(VersionConflict):  # the same version written again: not doubled
        store.save(shard, new, b"b", 2000, _stats(2000, [ALARM]), 2, since=1000)

    key = f"{unique_name}:{{m}}:timeline"
    assert redis_client.type(key) == b"stream" and redis_client.xlen(key) == 2
    read = store.timeline("m", None, 10)
    assert [(e.next_offset, e.version) for e in read.entries] == [(1000, 1), (2000, 2)]
    assert read.first_id == read.entries[0].id
    first, second = read.entries
    assert first.event_ms == 1_700_000_000_999 and first.alarms == []
    assert second.alarms == [ALARM]  # the alarm with its whole explanation
    assert first.t <= second.t and abs(second.t - redis_client.time()[0]) < 60

    # A reader that keeps up reads only what is new; a bound keeps the newest.
    assert store.timeline("m", second.id, 10).entries == []
    store.save(shard, new, b"c", 3000, _stats(3000, [ALARM]), 3, since=2000)
    newer = store.timeline("m", second.id, 10).entries
    assert [e.version for e in newer] == [3] and newer[0].alarms == []  # alarm is old
    assert [e.version for e in store.timeline("m", None, 2).entries] == [2, 3]


def test_the_timeline_is_capped(redis_client, unique_name) -> None:
    cap = 50
    store = RedisCheckpointStore(redis_client, prefix=unique_name, timeline_entries=cap)
    shard = ShardId("m", "t", 0)
    epoch, _ = store.claim(shard)
    for version in range(1, 401):
        store.save(shard, epoch, b"x", version, _stats(version), version)
    # MAXLEN ~ trims whole stream nodes: it keeps at least the cap, and less than a node
    # more.
    node = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    length = redis_client.xlen(f"{unique_name}:{{m}}:timeline")
    assert cap <= length < cap + node, length
    newest = store.timeline("m", None, 1).entries
    assert newest[0].version == 400


def test_deleting_a_model_deletes_its_timeline_and_no_other(
    store, redis_client, unique_name
) -> None:
    for model in ("m", "other"):
        shard = ShardId(model, "t", 0)
        epoch, _ = store.claim(shard)
        store.save(shard, epoch, b"x", 10, _stats(10), 1)
    assert store.delete_model("m") == [ShardId("m", "t", 0)]
    assert not redis_client.exists(f"{unique_name}:{{m}}:timeline")
    read = store.timeline("m", None, 10)
    assert read.entries == [] and read.first_id is None
    assert len(store.timeline("other", None, 10).entries) == 1


def _board(store: RedisCheckpointStore, reads: list[str | None]) -> StatusBoard:
    """The status page's board over the store's timeline; ``reads`` lists each read's
    ``after``."""

    def timeline(model: str, after: str | None, count: int) -> TimelineRead:
        reads.append(after)
        return store.timeline(model, after, count)

    def describe(model: str) -> dict:
        return {
            "shards": [],
            "task": "binary",
            "release": None,
            "freshness_seconds": None,
            "events_learned": 0,
        }

    return StatusBoard(lambda: ["m"], describe, timeline=timeline)


def _history(board: StatusBoard) -> list[dict]:
    return board.status()["models"][0]["history"]


def test_the_page_history_is_the_timeline_the_same_after_a_restart_and_on_every_replica(
    store,
) -> None:
    shards = [ShardId("m", "t", p) for p in (0, 1)]
    epochs = {s: store.claim(s)[0] for s in shards}

    def save(shard: ShardId, version: int, accuracy: float, alarms=None) -> None:
        stats = {
            "events_learned": 100 * version,
            "rolling_metrics": {"accuracy": accuracy},
            "drift_detections": version // 3,
            "drift_offsets": [],
            "monitor": {
                "signals": {"feature_set": 2.0 * version},
                "thresholds": {"feature_set": 4.0},
                "responsible": {"feature_set": "hvalue"},
                "alarm_log": alarms or [],
            },
        }
        store.save(shard, epochs[shard], b"x", 100 * version, stats, version, since=-1)

    first_reads: list[str | None] = []
    first = _board(store, first_reads)
    assert _history(first) == []
    save(shards[0], 1, 0.5)
    save(shards[1], 1, 0.7)
    save(shards[0], 2, 0.9, [ALARM])
    seen = _history(first)
    # Each point combines the shards as of its entry: the rolling metric weighted by events.
    assert [p["events_learned"] for p in seen] == [100, 200, 300]
    assert [round(p["rolling"], 4) for p in seen] == [
        0.5,
        0.6,
        round((0.9 * 200 + 0.7 * 100) / 300, 4),
    ]
    assert seen[2]["alarms"] == [{**ALARM, "shard": "t/0"}]
    worst = seen[2]["signals"]["feature_set"]
    assert (worst["value"], worst["threshold"], worst["shard"]) == (4.0, 4.0, "t/0")
    assert seen[0]["t"] <= seen[1]["t"] <= seen[2]["t"]

    # Once it holds entries, a poll reads only after the newest of them.
    assert _history(first) == seen
    assert first_reads == [None, None, seen[-1]["id"]]

    # An API started now (a restart, another replica) shows the same history.
    assert _history(_board(store, [])) == seen
    save(shards[1], 2, 0.8)
    assert _history(first) == _history(_board(store, [])) and len(_history(first)) == 4

    # A model reset deletes the timeline: the page starts again from what comes after.
    store.delete_model("m")
    assert _history(first) == []
    epochs = {s: store.claim(s)[0] for s in shards}
    save(shards[0], 5, 0.6)
    assert [p["version"] for p in _history(first)] == [5]
