"""A replay report's plot, ``metrics.png``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """The rolling primary metric over event time, per shard, drift points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report["primary_metric"]
    fig, (ax, signals_ax) = plt.subplots(
        2, 1, figsize=(10, 7), dpi=100, sharex=True, height_ratios=(3, 2)
    )
    runs = [("replayed", report["replayed"], "-")]
    if "compare" in report:
        runs.append(("live", report["compare"]["live"], "--"))
    for label, run, style in runs:
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for point in run["series"]:
            by_shard.setdefault(f"{point['topic']}/{point['partition']}", []).append(point)
        for shard, points in sorted(by_shard.items()):
            xs: Any = [datetime.fromtimestamp(p["event_time_ms"] / 1000, UTC) for p in points]
            ys = [p["rolling_metrics"].get(primary) for p in points]
            (line,) = ax.plot(xs, ys, style, label=f"{label} {shard}")
            drift = [d for d in run["drift"] if f"{d['topic']}/{d['partition']}" == shard]
            for d in drift:
                if d["event_time_ms"] is None:
                    continue
                when: Any = datetime.fromtimestamp(d["event_time_ms"] / 1000, UTC)
                ax.axvline(when, color=line.get_color(), alpha=0.35, linestyle=":")
            if drift:
                ax.plot([], [], ":", color=line.get_color(), label=f"drift {label} {shard}")
            if label == "replayed":
                _plot_signals(signals_ax, xs, points, shard)
    ax.set_title(f"{report['model']}: rolling {primary} over event time (replay)")
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


def _plot_signals(ax: Any, xs: list[Any], points: list[dict[str, Any]], shard: str) -> None:
    """The prediction and feature shift of each monitor window, over event time."""
    for signal, style in (("prediction_shift", "-"), ("feature_shift", "--")):
        ys = [p.get("signals", {}).get(signal) for p in points]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, style, label=f"{signal} {shard}")
