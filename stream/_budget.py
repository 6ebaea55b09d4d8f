"""The learning thread's time for checkpoints: a cadence that adapts to their cost.

A checkpoint runs on the learning thread: pickling a large model (a forest of trees)
stalls learning for as long as it takes. `CheckpointBudget` bounds the share of the
thread's time that checkpoints due by count or by time may take, for all of a worker's
shards together (``checkpoint.max_share``). It is a token bucket counted in seconds of
checkpoint time: it fills at ``max_share`` seconds per second of wall time, up to a small
burst, and each checkpoint spends what it took; a due checkpoint waits while the bucket
is in debt. One checkpoint that took t seconds therefore defers the next until
t / max_share seconds have passed after it, and many cheap shards share the same budget,
so the bound holds however many shards a worker has. While a model grows, each checkpoint
costs more than the one that paid for it: over a window that ends just after one, its
cost is not paid back yet (bench/bench_bigmodel.py measures both).

Deferring a checkpoint only delays it: its shard keeps learning and keeps its pending
events, so exactly once is unchanged; what it costs is freshness of the served model and
more events to re-learn after a crash. Revokes, shutdowns, rollbacks and retries after an
outage are never deferred. A ``max_share`` of 1 turns the bound off: checkpoints keep
exactly their spec's cadence, whatever they cost.

>>> clock = iter([0.0, 0.0, 0.0, 0.5, 9.0, 21.0]).__next__
>>> budget = CheckpointBudget(0.1, clock)
>>> budget.allows()  # at 0 s: nothing spent yet
True
>>> budget.spend(2.0)  # a checkpoint took 2 s: another may run once 20 s have passed
>>> budget.allows(), budget.allows()  # at 0.5 s and 9 s
(False, False)
>>> budget.allows()  # at 21 s
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CheckpointBudget"]

# The most checkpoint time the bucket saves up while checkpoints cost less than their
# share, in seconds of wall time at ``max_share``: enough for the checkpoints of many
# cheap shards that fall due in one pass of the loop to go together, small against any
# window the share is judged over.
_BURST_S = 1.0


class CheckpointBudget:
    """Seconds of checkpoint time the learning thread may still spend (a token bucket).

    Parameters
    ----------
    max_share
        The share of wall time checkpoints may take, in (0, 1]; 1 never defers one, so
        that checkpoints keep exactly the cadence of their spec.
    clock
        Monotonic seconds; ``time.monotonic`` unless a test drives it.

    """

    def __init__(self, max_share: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self._share = max_share
        self._clock = clock
        self._at = clock()
        self._balance = 0.0
        self._burst = max_share * _BURST_S
        # Since when a due checkpoint has been waiting on the budget (None: none waits).
        self.deferred_since: float | None = None

    @property
    def max_share(self) -> float:
        """The share of wall time checkpoints may take."""
        return self._share

    def _refill(self, spent: float = 0.0) -> float:
        """Credit the time since the last call but its last ``spent`` seconds; now."""
        now = self._clock()
        if now - spent > self._at:
            credit = (now - spent - self._at) * self._share
            self._balance = min(self._burst, self._balance + credit)
        self._at = max(self._at, now)
        return now

    def allows(self) -> bool:
        """True when a checkpoint due by count or by time may run now (always with a
        ``max_share`` of 1: checkpoints may take the whole thread)."""
        if self._share >= 1:
            return True
        now = self._refill()
        if self._balance >= 0:
            return True
        if self.deferred_since is None:
            self.deferred_since = now
        return False

    def spend(self, seconds: float) -> None:
        """A checkpoint that just ended took ``seconds`` of the learning thread (written or
        not). Its own time earns no credit: a cycle of one checkpoint and the learning
        it waits for is ``seconds * (1 + 1 / max_share)``, so checkpoints take at most
        ``max_share / (1 + max_share)`` of the thread once the model's size is steady."""
        self._refill(spent=seconds)
        self._balance -= seconds

    def wait(self) -> float:
        """Seconds until a due checkpoint may run (0 when it may now)."""
        self._refill()
        return max(0.0, -self._balance / self._share)
