"""A replay report's plot, ``metrics.png``.

Each shard's series is drawn over event time in offset order, one line per run of events
whose event times move forward: where the event time goes back (the same events produced
twice, a producer that restarted its clock), the line breaks and the next run starts a
line of its own, labelled with the offset it starts at. A line never strokes back across
the chart from the end of one run to the start of the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The line style of a shard's runs after its first (where its event time went back).
_LATER_RUN = "-."


def runs(points: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """A shard's series (in offset order) split where its event time goes back.

    Examples
    --------
    >>> [[p["offset"] for p in run] for run in runs(
    ...     [{"offset": o, "event_time_ms": t} for o, t in [(1, 10), (2, 20), (3, 5), (4, 9)]])]
    [[1, 2], [3, 4]]
    """
    out: list[list[Mapping[str, Any]]] = []
    for point in sorted(points, key=lambda p: p["offset"]):
        if not out or point["event_time_ms"] < out[-1][-1]["event_time_ms"]:
            out.append([])
        out[-1].append(point)
    return out


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """The rolling primary metric over event time, per shard and run of forward event
    times, drift points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report["primary_metric"]
    fig, (ax, signals_ax) = plt.subplots(
        2, 1, figsize=(10, 7), dpi=100, sharex=True, height_ratios=(3, 2)
    )
    replays = [("replayed", report["replayed"], "-")]
    if "compare" in report:
        replays.append(("live", report["compare"]["live"], "--"))
    broken = False
    for label, replay, style in replays:
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for point in replay["series"]:
            by_shard.setdefault(f"{point['topic']}/{point['partition']}", []).append(point)
        for shard, points in sorted(by_shard.items()):
            color = None
            signal_colors: dict[str, Any] = {}
            for i, run in enumerate(runs(points)):
                xs: Any = [_when(p["event_time_ms"]) for p in run]
                ys = [p["rolling_metrics"].get(primary) for p in run]
                name = f"{label} {shard}" + (f" from offset {run[0]['offset']}" if i else "")
                dashes = _LATER_RUN if i else style
                (line,) = ax.plot(xs, ys, dashes, color=color, label=name)
                color = line.get_color()
                if i:
                    broken = True
                    ax.plot(xs[:1], ys[:1], "o", color=color, markersize=4)
                if label == "replayed":
                    _plot_signals(signals_ax, xs, run, name, signal_colors, later=i > 0)
            drift = [d for d in replay["drift"] if f"{d['topic']}/{d['partition']}" == shard]
            for d in drift:
                if d["event_time_ms"] is None:
                    continue
                ax.axvline(_when(d["event_time_ms"]), color=color, alpha=0.35, linestyle=":")
            if drift:
                ax.plot([], [], ":", color=color, label=f"drift {label} {shard}")
    title = f"{report['model']}: rolling {primary} over event time (replay)"
    if broken:
        title += "\nevent time goes back: each run of events is a line of its own"
    ax.set_title(title)
    signals_ax.set_xlabel("event time (UTC)")
    signals_ax.set_ylabel("label-free signal")
    signals_ax.grid(alpha=0.3)
    if signals_ax.lines:
        signals_ax.legend(fontsize="small", loc="best")
    ax.set_ylabel(f"rolling {primary}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _plot_signals(
    ax: Any,
    xs: list[Any],
    points: Sequence[Mapping[str, Any]],
    name: str,
    colors: dict[str, Any],
    later: bool,
) -> None:
    """The prediction and feature shift of each monitor window over event time, in the
    colour of the signal's first run (``colors``, filled here)."""
    for signal, style in (("prediction_shift", "-"), ("feature_shift", "--")):
        ys = [p.get("signals", {}).get(signal) for p in points]
        if any(y is not None for y in ys):
            (line,) = ax.plot(
                xs,
                ys,
                _LATER_RUN if later else style,
                color=colors.get(signal),
                label=f"{signal} {name}",
            )
            colors.setdefault(signal, line.get_color())
