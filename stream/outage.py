"""Riding out a dependency that stops answering: when to retry, and when to give up.

A worker that loses Redis (or Kafka) keeps running: it stops learning, keeps its state
in memory, retries with a bounded, fully jittered exponential backoff, and resumes when the
dependency answers again. ``Outage`` tracks one dependency: it logs the start and the end
of each outage with its duration, keeps the ``livelearn_dependency_up`` gauge, says when
the next retry is due, and past ``outage.timeout_s`` raises ``ServiceUnavailable`` (exit
code 69), for the worker's supervisor to restart it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from livelearn.errors import ServiceUnavailable
from livelearn.settings import OutageSettings

__all__ = ["Backoff", "Outage"]

log = logging.getLogger("livelearn.outage")


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Backoff:
    """Exponential backoff with full jitter: the n-th delay (from 0) is drawn uniformly from
    ``[0, min(max_s, initial_s * 2**n)]``, so that workers that lost the same server do not
    come back to it in step.

    Examples
    --------
    >>> backoff = Backoff(0.2, 5.0, rng=lambda: 1.0)  # the upper bound of each draw
    >>> [backoff.next_delay() for _ in range(7)]
    [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    >>> backoff.reset(); backoff.next_delay()
    0.2

    """

    def __init__(
        self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self._attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        cap = min(self.max_s, self.initial_s * 2.0 ** min(self._attempts, 64))
        self._attempts += 1
        return self._rng() * cap

    def reset(self) -> None:
        """Start again from the first delay (after a success)."""
        self._attempts = 0


class Outage:
    """Whether one dependency answers, since when it does not, and when to try it again.

    Parameters
    ----------
    name
        The dependency as people call it, e.g. ``"Redis"``; the gauge's label is its lower
        case.
    settings
        ``outage``: the bound and the backoff.
    up
        The ``livelearn_dependency_up`` child for this dependency: 1 or 0.
    clock
        Monotonic seconds; a test can pass its own.
    """

    def __init__(
        self,
        name: str,
        settings: OutageSettings,
        up: _Gauge,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._settings = settings
        self._up = up
        self._clock = clock
        self._backoff = Backoff(settings.retry_initial_s, settings.retry_max_s, rng)
        self._since: float | None = None
        self._next_try = 0.0
        self._last_error = ""
        self._attempts = 0

    @property
    def active(self) -> bool:
        """True from a failure until the next success."""
        return self._since is not None

    def due(self, now: float | None = None) -> bool:
        """True when the dependency may be called: no outage, or its next retry is due."""
        if self._since is None:
            return True
        return (self._clock() if now is None else now) >= self._next_try

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the outage began (0 when there is none)."""
        if self._since is None:
            return 0.0
        return (self._clock() if now is None else now) - self._since

    def retry_now(self) -> None:
        """Make the next retry due at once (a last attempt before shutting down)."""
        self._next_try = 0.0

    def failed(self, error: BaseException) -> None:
        """A call failed: start the outage if none is under way, and schedule a retry."""
        now = self._clock()
        self._last_error = str(error)
        self._attempts += 1
        if self._since is None:
            self._since = now
            self._backoff.reset()
            self._up.set(0)
            log.warning(
                "%s does not answer: learning paused, state kept in memory; retrying for up "
                "to outage.timeout_s=%g s: %s",
                self.name,
                self._settings.timeout_s,
                error,
                extra={"fields": {"dependency": self.name.lower(), "outage": "start"}},
            )
        self._next_try = now + self._backoff.next_delay()

    def succeeded(self) -> None:
        """A call succeeded: end the outage, if one was under way."""
        self._up.set(1)
        if self._since is None:
            return
        duration = self._clock() - self._since
        log.warning(
            "%s answers again after %.1f s (%d failed attempts): learning resumes",
            self.name,
            duration,
            self._attempts,
            extra={
                "fields": {
                    "dependency": self.name.lower(),
                    "outage": "end",
                    "duration_s": round(duration, 3),
                }
            },
        )
        self._since = None
        self._attempts = 0
        self._backoff.reset()

    def check(self) -> None:
        """Raise ServiceUnavailable once the outage has lasted longer than its bound."""
        elapsed = self.elapsed()
        if elapsed <= self._settings.timeout_s:
            return
        raise ServiceUnavailable(
            f"{self.name} has not answered for {elapsed:.1f} s, longer than "
            f"outage.timeout_s={self._settings.timeout_s:g} (LIVELEARN_OUTAGE__TIMEOUT_S); "
            f"last error: {self._last_error}. The worker exits for its supervisor to restart "
            f"it; learning resumes from the last checkpoints once {self.name} answers"
        )
