"""Watching the worker's Kafka consumer: does Kafka answer it, and does it make progress?

A consumer can go quiet in three ways, and `KafkaWatch` tells them apart from the
consumer's `KafkaStatus` (stream/fetcher.py) and what the worker's loop sees:

- Kafka does not answer (a broker restarting, a network cut): no connection, or no answer
  for longer than a member's heartbeats and metadata refreshes allow. The client
  reconnects by itself; `Outage` logs it, keeps ``livelearn_dependency_up{dependency=
  "kafka"}`` at 0, and past ``outage.timeout_s`` the worker exits 69.
- The group does not settle: Kafka answers, but the consumer is not a stable member of its
  group (kafka-python can spin looking for the coordinator after a broker restart during
  a join). A stable member that holds no partition is fine: the group has more members
  than partitions.
- No records arrive although the consumer's partitions have records it has not read, or
  the fetch process stops reporting at all.

For the last two, past ``outage.stall_timeout_s`` the worker recreates its consumer (the
restore from the checkpoints keeps learning exactly once); if that has not helped
``outage.timeout_s`` later, it exits 69 for its supervisor to restart it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from livelearn.errors import ServiceUnavailable
from livelearn.settings import KafkaSettings, OutageSettings
from livelearn.stream.fetcher import KafkaStatus
from livelearn.stream.outage import Outage

__all__ = ["KafkaWatch"]

log = logging.getLogger("livelearn.kafka")

# How long the consumer may have no broker connection before Kafka counts as down.
_DISCONNECTED_S = 2.0


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class KafkaWatch:
    """Kafka's side of the worker's health, from its consumer's reports.

    Parameters
    ----------
    kafka, outage
        The settings: the group's timeouts tell how often Kafka answers a healthy member;
        ``outage`` the bounds.
    up
        The ``livelearn_dependency_up{dependency="kafka"}`` child.
    clock
        Monotonic seconds; a test can pass its own.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        outage: OutageSettings,
        up: _Gauge,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outage = Outage("Kafka", outage, up, clock=clock)
        self._settings = outage
        self._group = kafka.group_id
        self._clock = clock
        # A stable member hears from Kafka at each heartbeat, any consumer at each metadata
        # refresh; a rebalance holds heartbeats back for up to the session timeout.
        self.answer_limit_s = (
            max(kafka.session_timeout_ms, kafka.metadata_max_age_ms) + kafka.heartbeat_interval_ms
        ) / 1000
        now = clock()
        self._consumer_since = now  # when the current consumer was made
        self._unsettled_since: float | None = None  # not a stable member, this consumer
        self._progress_at = now  # last records, or nothing left to read
        self._stuck_since: float | None = None  # no progress, across recreated consumers
        self._stuck_reason = ""
        self._disconnected_since: float | None = None
        up.set(1)

    @property
    def up(self) -> bool:
        """False while an outage of Kafka is under way."""
        return not self._outage.active

    @property
    def outage(self) -> Outage:
        """The outage bookkeeping (its backoff paces new consumers)."""
        return self._outage

    def details(self, now: float | None = None) -> dict[str, object]:
        """For /healthz and /readyz."""
        now = self._clock() if now is None else now
        out: dict[str, object] = {}
        if self._outage.active:
            out["kafka_outage_s"] = round(self._outage.elapsed(now), 1)
        if self._stuck_since is not None:
            out["kafka_stalled_s"] = round(now - self._stuck_since, 1)
            out["kafka_stall"] = self._stuck_reason
        return out

    def failed(self, error: BaseException) -> None:
        """The consumer raised, or a new one could not be made: Kafka does not answer."""
        self._outage.failed(error)
        self._outage.check()

    def recreated(self) -> None:
        """A new consumer replaces the old one: its own clocks start now (the bound to exit
        keeps running until progress is seen)."""
        now = self._clock()
        self._consumer_since = now
        self._unsettled_since = None
        self._progress_at = now

    def observe(self, status: KafkaStatus | None, *, lagging: bool, delivered: bool) -> str | None:
        """Take in one turn of the loop; a reason to recreate the consumer, or None.

        Parameters
        ----------
        status
            The consumer's latest report; None when it has not reported yet.
        lagging
            Some partition the worker learns from has records it has not received.
        delivered
            This poll returned records.

        Raises
        ------
        ServiceUnavailable
            Kafka has not answered for longer than ``outage.timeout_s``, or the consumer has
            made no progress for ``outage.stall_timeout_s`` and then ``outage.timeout_s``.
        """
        now = self._clock()
        stall_s = self._settings.stall_timeout_s
        reported_at = self._consumer_since if status is None else status.at
        fresh = now - reported_at <= self.answer_limit_s
        if status is not None and fresh and status.connected and status.answered_at is not None:
            answered = now - status.answered_at <= self.answer_limit_s
        else:
            answered = False
        # A new consumer has not connected yet: that is start-up, not an outage (it becomes
        # one if Kafka has still not answered when a member would have heard from it).
        starting = (
            status is not None
            and status.answered_at is None
            and now - self._consumer_since <= self.answer_limit_s
        )
        # kafka-python drops and makes connections as it goes (the bootstrap one, the
        # coordinator's): only a connection missing for a while is news.
        if status is not None and fresh and not status.connected:
            if self._disconnected_since is None:
                self._disconnected_since = now
        else:
            self._disconnected_since = None
        cut_off = (
            self._disconnected_since is not None
            and now - self._disconnected_since >= _DISCONNECTED_S
        )
        if answered and not cut_off:
            self._outage.succeeded()
        elif starting or (status is not None and fresh and not status.connected and not cut_off):
            pass
        elif not fresh or cut_off:
            if not self._outage.active:
                self._outage.failed(
                    ConnectionError(
                        "no connection to any broker"
                        if fresh
                        else "the Kafka consumer does not report (no answer from Kafka)"
                    )
                )
        elif status is not None and status.answered_at is not None and not self._outage.active:
            self._outage.failed(ConnectionError("no answer to heartbeats or metadata requests"))
        self._outage.check()

        if delivered or (fresh and status is not None and status.joined and not lagging):
            if self._stuck_since is not None:
                log.warning(
                    "the Kafka consumer makes progress again after %.1f s",
                    now - self._stuck_since,
                    extra={
                        "fields": {"stall": "end", "duration_s": round(now - self._stuck_since, 3)}
                    },
                )
            self._stuck_since = None
        stall = None
        if now - reported_at > stall_s:
            stall = f"the Kafka consumer has not reported for {now - reported_at:.0f} s"
        if status is not None and not status.joined:
            if self._unsettled_since is None:
                self._unsettled_since = now
            elif now - self._unsettled_since > stall_s:
                stall = (
                    f"the consumer has not been a stable member of group {self._group!r} for "
                    f"{now - self._unsettled_since:.0f} s"
                )
        else:
            self._unsettled_since = None
        if delivered or not lagging:
            self._progress_at = now
        elif now - self._progress_at > stall_s:
            stall = (
                f"no records for {now - self._progress_at:.0f} s although the assigned "
                "partitions have records not yet read"
            )
        if stall is not None:
            if self._stuck_since is None:
                self._stuck_since = now - stall_s
            self._stuck_reason = stall
        if (
            self._stuck_since is not None
            and now - self._stuck_since > stall_s + self._settings.timeout_s
        ):
            raise ServiceUnavailable(
                f"Kafka: {self._stuck_reason}; a new consumer has not helped within "
                f"outage.timeout_s={self._settings.timeout_s:g} after "
                f"outage.stall_timeout_s={stall_s:g} (LIVELEARN_OUTAGE__TIMEOUT_S, "
                "LIVELEARN_OUTAGE__STALL_TIMEOUT_S). The worker exits for its supervisor to "
                "restart it; learning resumes from the last checkpoints"
            )
        if stall is not None and now - self._consumer_since > stall_s:
            return stall
        return None
