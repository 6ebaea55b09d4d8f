"""A checkpoint's timeline entry (store/timeline.py): what is new since the checkpoint the
state built on, each alarm explained, and a size that does not grow with the stream."""

from __future__ import annotations

import json
import random
from typing import Any

from livelearn.learners import Learner
from livelearn.store.timeline import decode_entry, timeline_entry
from tests.unit.test_monitor import WINDOW, _spec


def _learned(n: int, vanish_at: int) -> Learner:
    """A classifier with a monitor, fed features a, b and a category c; from ``vanish_at``
    feature ``a`` vanishes (a label-free alarm)."""
    learner = Learner(_spec())
    rng = random.Random(3)
    for offset in range(n):
        x: dict[str, Any] = {"a": rng.gauss(0, 1), "b": rng.gauss(5, 2), "c": rng.choice("xyz")}
        y = x["a"] + (x["b"] - 5) / 2 > 0
        if offset >= vanish_at:
            del x["a"]
        learner.process(x, y, offset, 1_700_000_000_000 + offset)
    return learner


def test_an_entry_holds_the_checkpoint_and_its_new_alarms_explained() -> None:
    vanish_at = 12 * WINDOW + 130
    learner = _learned(16 * WINDOW, vanish_at)
    stats = learner.stats()
    log = stats["monitor"]["alarm_log"]
    assert any(a["signal"] == "feature_set" for a in log), log

    raw = timeline_entry("t", 2, 16 * WINDOW, 7, stats, 1_700_000_007_999, vanish_at)
    entry = decode_entry("1700000009000-0", raw)
    assert (entry.topic, entry.partition, entry.version) == ("t", 2, 7)
    assert entry.next_offset == 16 * WINDOW
    assert entry.event_ms == 1_700_000_007_999 and entry.t == 1_700_000_009.0
    assert entry.rolling_metrics == stats["rolling_metrics"]
    assert entry.monitor is not None
    assert entry.monitor["thresholds"] == stats["monitor"]["thresholds"]
    assert "alarm_log" not in entry.monitor
    vanished = next(a for a in entry.alarms if a["signal"] == "feature_set")
    assert vanished["feature"] == "a"
    for field in ("value", "threshold", "first_offset", "last_offset", "first_event_ms"):
        assert vanished[field] is not None, field
    assert vanished["value"] > vanished["threshold"]
    assert vanished["last_offset"] >= vanish_at

    # The next checkpoint, from the offset this one ends at, lists none of them again.
    later = decode_entry("1700000010000-0", timeline_entry("t", 2, 1, 8, stats, None, 16 * WINDOW))
    assert later.alarms == [] and later.drift_offsets == []


def test_an_entry_stays_small_however_many_alarms_and_however_long_their_names() -> None:
    stats = _learned(4 * WINDOW, 10**9).stats()
    typical = len(timeline_entry("t", 0, 4 * WINDOW, 1, stats, 1, -1))
    long_name = "f" * 10_000
    alarm = {
        "seq": 1,
        "signal": "category_shift",
        "feature": long_name,
        "category": long_name,
        "value": 1e6,
        "threshold": 4.2,
        "now": 0.5,
        "before": 0.1,
        "first_offset": 0,
        "last_offset": 10,
        "first_event_ms": 1,
        "last_event_ms": 2,
        "also": [long_name] * 10,
    }
    stats["monitor"]["alarm_log"] = [dict(alarm, seq=i) for i in range(50)]
    stats["drift_offsets"] = list(range(1000))
    worst = timeline_entry("t", 0, 4 * WINDOW, 1, stats, 1, -1)
    data = json.loads(worst)
    assert len(data["alarms"]) == 20 and data["alarms_left_out"] == 30
    assert len(data["drift_offsets"]) == 20
    assert all(len(a["feature"]) == 64 for a in data["alarms"])
    # Bounded by the entry's own caps, not by the stream: a few KiB without alarms, and
    # some tens of KiB at the very worst.
    assert typical < 4096, typical
    assert len(worst) < 40_000, len(worst)
