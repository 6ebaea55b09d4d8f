"""The replay's metrics.png over a topic whose event times go back (the same events
produced twice, as `make run` twice does): each run of forward event times is a line of
its own, never a stroke back across the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from livelearn.stream.replay._plot import plot_report, runs

T0 = 1_700_000_000_000


def _series(partition: int, times: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "topic": "t",
            "partition": partition,
            "offset": 100 * (i + 1),
            "event_time_ms": t,
            "rolling_metrics": {"accuracy": 0.5 + i / (4 * len(times))},
            "signals": {"prediction_shift": 1.0 + (i % 3)},
        }
        for i, t in enumerate(times)
    ]


# Partition 0 holds the same ten minutes twice; partition 1 moves forward throughout, with
# one point at the same time as the one before it.
TWICE = [T0 + 60_000 * i for i in range(10)] * 2
FORWARD = [T0 + 60_000 * i for i in (0, 1, 1, 2, 3, 4)]


def test_a_series_breaks_where_its_event_time_goes_back_and_only_there() -> None:
    parts = runs(_series(0, TWICE))
    assert [[p["offset"] for p in part] for part in parts] == [
        [100 * (i + 1) for i in range(10)],
        [100 * (i + 1) for i in range(10, 20)],
    ]
    for part in parts:
        times = [p["event_time_ms"] for p in part]
        assert times == sorted(times)
    assert len(runs(_series(1, FORWARD))) == 1
    shuffled = list(reversed(_series(0, TWICE)))  # in offset order, whatever the input's
    assert runs(shuffled) == parts


def test_the_png_is_written_for_a_topic_whose_event_times_go_back(tmp_path: Path) -> None:
    series = _series(0, TWICE) + _series(1, FORWARD)
    report = {
        "model": "m",
        "primary_metric": "accuracy",
        "replayed": {
            "series": series,
            "drift": [{"topic": "t", "partition": 0, "offset": 1500, "event_time_ms": T0}],
        },
    }
    path = tmp_path / "metrics.png"
    plot_report(report, path)
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size == (1000, 700)
