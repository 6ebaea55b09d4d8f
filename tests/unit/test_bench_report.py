"""The worker benchmark's arithmetic and table (bench/_report.py); the benchmark itself is
run by ``make bench``, not by the tests."""

from __future__ import annotations

import pytest

from bench._report import CaseSummary, best_peer, format_table, summarize

RATES = {
    "river": [100.0, 200.0, 100.0],
    "peer a": [50.0, 80.0, 60.0],
    "peer b": [70.0, 90.0, 40.0],
    "worker": [60.0, 100.0, 90.0],
}
PEERS = ["peer a", "peer b"]


def test_best_peer_has_the_highest_median() -> None:
    assert best_peer(RATES, PEERS) == "peer b"  # medians: a 60, b 70


def test_best_peer_tie_goes_to_the_first_listed() -> None:
    assert best_peer({"a": [1.0, 3.0], "b": [2.0, 2.0]}, ["a", "b"]) == "a"


def test_best_peer_needs_a_peer() -> None:
    with pytest.raises(ValueError, match="no peer"):
        best_peer(RATES, [])


def test_summaries_keep_the_cases_order() -> None:
    assert [s.case for s in summarize(RATES, "river", PEERS)] == list(RATES)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # median, min, max; ratio to River: median of 0.5, 0.4, 0.6 (per round, not of medians)
        ("peer a", CaseSummary("peer a", 60.0, 50.0, 80.0, 0.5, 60.0 / 70.0)),
        ("peer b", CaseSummary("peer b", 70.0, 40.0, 90.0, 0.45, 1.0)),
        ("worker", CaseSummary("worker", 90.0, 60.0, 100.0, 0.6, 90.0 / 70.0)),
        ("river", CaseSummary("river", 100.0, 100.0, 200.0, 1.0, 100.0 / 70.0)),
    ],
    ids=["peer", "best peer", "worker", "river"],
)
def test_summary_of_a_case(case: str, expected: CaseSummary) -> None:
    got = {s.case: s for s in summarize(RATES, "river", PEERS)}[case]
    assert got.median == expected.median
    assert (got.low, got.high) == (expected.low, expected.high)
    assert got.vs_river == pytest.approx(expected.vs_river)
    assert got.vs_best_peer == pytest.approx(expected.vs_best_peer)


def test_even_rounds_take_the_mean_of_the_middle_two() -> None:
    _, case = summarize({"river": [10.0, 10.0], "c": [4.0, 8.0]}, "river", ["c"])
    assert case.median == 6.0
    assert case.vs_river == pytest.approx(0.6)


def test_every_case_runs_in_every_round() -> None:
    with pytest.raises(ValueError, match="'peer a' has 2 rates and River's loop 3"):
        summarize({**RATES, "peer a": [1.0, 2.0]}, "river", PEERS)


def test_table() -> None:
    rates = {"river": [20_000.0, 22_000.0], "peer": [10_000.0, 12_500.0]}
    table = format_table(summarize(rates, "river", ["peer"]), "peer")
    assert table.splitlines() == [
        "case      events/s   min-max over rounds  x river  x best peer",
        "river       21,000         20,000-22,000     1.00         1.87",
        "peer *      11,250         10,000-12,500     0.53         1.00",
    ]
