"""The outage policy: bounded, fully jittered retries, a gauge, logs at both ends and a
clear error past the bound; its settings; and the spec's ``start`` position."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from livelearn import ConfigError, ServiceUnavailable, SpecError
from livelearn.learners import ModelSpec, spec_fingerprint
from livelearn.settings import OutageSettings, load_settings
from livelearn.stream.outage import Backoff, Outage


class Gauge:
    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("draw", [0.0, 0.37, 0.999])
def test_backoff_draws_below_an_exponential_cap_bounded_by_the_largest(draw: float) -> None:
    backoff = Backoff(0.2, 5.0, rng=lambda: draw)
    delays = [backoff.next_delay() for _ in range(100)]
    caps = [min(5.0, 0.2 * 2**n) for n in range(100)]
    assert delays == pytest.approx([draw * cap for cap in caps])
    assert max(delays) <= 5.0


def test_backoff_spreads_its_retries() -> None:
    backoff = Backoff(1.0, 1.0)
    delays = {round(backoff.next_delay(), 6) for _ in range(50)}
    assert len(delays) > 40 and all(0 <= d <= 1 for d in delays)


def test_an_outage_is_logged_gauged_retried_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock, gauge = Clock(), Gauge()
    settings = OutageSettings(timeout_s=60, retry_initial_s=1, retry_max_s=4)
    outage = Outage("Redis", settings, gauge, clock=clock, rng=lambda: 1.0)
    with caplog.at_level(logging.INFO, logger="livelearn.outage"):
        outage.succeeded()
        assert gauge.values == [1] and not outage.active and outage.due()
        outage.failed(ConnectionError("connection refused"))
        assert outage.active and gauge.values[-1] == 0
        assert not outage.due()  # the first retry, 1 s later
        clock.now += 1
        assert outage.due()
        outage.failed(ConnectionError("connection refused"))
        clock.now += 1.5
        assert not outage.due()  # the second waits 2 s
        clock.now += 57.5
        outage.check()  # 60 s: at the bound, not past it
        clock.now += 0.5
        with pytest.raises(ServiceUnavailable) as info:
            outage.check()
        clock.now += 1
        outage.succeeded()
    message = str(info.value)
    assert "Redis has not answered for 60.5 s" in message
    assert "outage.timeout_s=60 (LIVELEARN_OUTAGE__TIMEOUT_S)" in message
    assert "connection refused" in message
    assert not outage.active and gauge.values[-1] == 1
    start, end = [r for r in caplog.records if r.name == "livelearn.outage"]
    assert "Redis does not answer" in start.getMessage()
    assert "after 61.5 s (2 failed attempts)" in end.getMessage()
    assert end.fields == {"dependency": "redis", "outage": "end", "duration_s": 61.5}  # type: ignore[attr-defined]


def test_retry_max_below_retry_initial_is_refused_naming_both(monkeypatch, tmp_path) -> None:
    for name in ("LIVELEARN_OUTAGE__RETRY_MAX_S", "LIVELEARN_OUTAGE__RETRY_INITIAL_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIVELEARN_OUTAGE__RETRY_MAX_S", "0.1")
    config = tmp_path / "s.yaml"
    config.write_text("outage: {retry_initial_s: 0.5}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert "outage.retry_max_s (0.1)" in message and "outage.retry_initial_s (0.5)" in message
    assert "LIVELEARN_OUTAGE__RETRY_MAX_S" in message
    assert OutageSettings(retry_initial_s=2, retry_max_s=2).retry_max_s == 2


# -- the spec's start ---------------------------------------------------------------------

SPEC: dict[str, Any] = {
    "name": "m",
    "topics": ["t"],
    "task": "binary",
    "pipeline": [{"class": "linear_model.LogisticRegression"}],
}


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (None, None),
        ("earliest", "earliest"),
        ("latest", "latest"),
        ("2026-11-26T10:00:00Z", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T11:00:00+01:00", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        (datetime(2026, 11, 26, 10, tzinfo=UTC), datetime(2026, 11, 26, 10, tzinfo=UTC)),
    ],
    ids=["default", "earliest", "latest", "utc", "offset", "yaml-timestamp"],
)
def test_a_spec_states_where_a_new_shard_starts(start: Any, expected: Any) -> None:
    spec = ModelSpec.from_config({**SPEC, "start": start})
    assert spec.start == expected
    again = ModelSpec.model_validate(spec.model_dump(mode="json"))
    assert again.start == expected


@pytest.mark.parametrize(
    ("start", "needle"),
    [
        ("yesterday", "'yesterday' is not a start position: use earliest, latest or an ISO-8601"),
        ("2026-11-26T10:00:00", "has no timezone: write it as e.g. 2026-11-26T10:00:00Z"),
        ("2026-11-26", "has no timezone"),
        (12, "12 is not a start position"),
    ],
    ids=["word", "naive-time", "a-day", "a-number"],
)
def test_a_bad_start_is_refused_naming_the_setting(start: Any, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        ModelSpec.from_config({**SPEC, "start": start}, loc="models[0]")
    assert str(info.value).startswith("models[0].start: ")
    assert needle in str(info.value)


def test_start_is_not_part_of_the_fingerprint() -> None:
    """It only places a shard with no checkpoint: changing it resumes the others."""
    base = ModelSpec.from_config(SPEC)
    for start in ("latest", "2026-11-26T10:00:00Z"):
        assert spec_fingerprint(ModelSpec.from_config({**SPEC, "start": start})) == (
            spec_fingerprint(base)
        )
