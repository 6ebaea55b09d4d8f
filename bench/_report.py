"""The worker benchmark's arithmetic and table: medians, spreads and ratios over rounds.

Pure functions over the rates measured (events a second, one per case per round, in round
order); tests/unit/test_bench_report.py checks them. And `call_latencies`, the timing of
calls made back to back while something else happens (bench/bench_bigmodel.py, and
tests/integration/test_large_model_serving.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CaseSummary", "best_peer", "call_latencies", "format_table", "summarize"]


@dataclass(frozen=True)
class CaseSummary:
    """One case's rates over the rounds, and its ratios."""

    case: str
    median: float
    low: float
    high: float
    # The median over rounds of the case's rate divided by River's loop rate of that round.
    vs_river: float
    # The case's median divided by the best peer's median.
    vs_best_peer: float


def best_peer(rates: Mapping[str, Sequence[float]], peers: Sequence[str]) -> str:
    """The peer with the highest median rate (the first listed on a tie)."""
    if not peers:
        raise ValueError("no peer cases to compare with")
    return max(peers, key=lambda peer: statistics.median(rates[peer]))


def summarize(
    rates: Mapping[str, Sequence[float]], river: str, peers: Sequence[str]
) -> list[CaseSummary]:
    """A summary of every case, in the order of ``rates``.

    Parameters
    ----------
    rates
        Each case's rate in each round, in round order; every case has one per round.
    river
        The case that is River's own loop: each round's rate of a case is divided by it.
    peers
        The cases whose best median is the other yardstick.

    Raises
    ------
    ValueError
        A case has no rate, or not as many as River's loop.

    """
    rounds = len(rates[river])
    for case, values in rates.items():
        if not values or len(values) != rounds:
            raise ValueError(
                f"case {case!r} has {len(values)} rates and River's loop {rounds}: "
                "every case runs once in every round"
            )
    best = statistics.median(rates[best_peer(rates, peers)])
    out = []
    for case, values in rates.items():
        median = statistics.median(values)
        ratios = [v / r for v, r in zip(values, rates[river], strict=True)]
        out.append(
            CaseSummary(
                case,
                median,
                min(values),
                max(values),
                statistics.median(ratios),
                median / best,
            )
        )
    return out


def format_table(summaries: Sequence[CaseSummary], best: str) -> str:
    """The summaries as a fixed-width table, the best peer marked with ``*``."""
    width = max(len("case"), *(len(s.case) + 2 for s in summaries))
    lines = [
        f"{'case':{width}} {'events/s':>10} {'min-max over rounds':>21} "
        f"{'x river':>8} {'x best peer':>12}"
    ]
    for s in summaries:
        name = f"{s.case} *" if s.case == best else s.case
        spread = f"{s.low:,.0f}-{s.high:,.0f}"
        ratios = f"{s.vs_river:8.2f} {s.vs_best_peer:12.2f}"
        lines.append(f"{name:{width}} {s.median:10,.0f} {spread:>21} {ratios}")
    return "\n".join(lines)


def call_latencies(
    call: Callable[[], object], until: Callable[[], bool], least: float
) -> list[float]:
    """Seconds each ``call`` took, called back to back until ``until()`` holds and at least
    ``least`` seconds have passed."""
    out = []
    started = time.perf_counter()
    while not until() or time.perf_counter() - started < least:
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out
