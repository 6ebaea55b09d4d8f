"""The lookup's background thread: it listens to the models' update channels, checks every
version periodically in case a message was missed, and reconnects with backoff while Redis
is away, asking the lookup to refresh a model each time it may have changed.

On Redis Cluster the channels are sharded (SSUBSCRIBE): each is heard from the master
serving its model's slot, and redis-py follows a channel to its new master after a
failover. What is announced while a master changes is lost, as with any pub/sub; the
periodic check finds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import redis
from redis.client import PubSub
from redis.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import RedisClusterException

from livelearn.errors import ServiceUnavailable

__all__ = ["RedisContact", "ReloadReason", "Reloader"]

log = logging.getLogger("livelearn.serving")

# What set off a reload, as counted in livelearn_serving_reloads_total.
ReloadReason = Literal["initial", "poll", "announce", "pin"]

# How long the listener waits for a message before it looks at the stop flag and the timer.
_LISTEN_SECONDS = 0.25
# Reconnection backoff of the background loop while Redis is away.
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0


class RedisContact:
    """Whether Redis answered the last request, and when it last answered."""

    def __init__(self) -> None:
        self.ok = False
        self.seen_at = -math.inf

    def seen(self) -> None:
        """Redis just answered."""
        self.ok = True
        self.seen_at = time.monotonic()

    def answered_within(self, seconds: float) -> bool:
        """Whether Redis is up and answered in the last ``seconds``."""
        return self.ok and time.monotonic() - self.seen_at < seconds


class Reloader:
    """The thread that calls ``refresh(model, reason)`` whenever ``model`` may have changed.

    Parameters
    ----------
    client
        The Redis client to subscribe with.
    channels
        Update channel -> the model it announces.
    refresh
        Brings a model up to what Redis holds; raises ``redis.RedisError`` when Redis does
        not answer.
    check_seconds
        How often every model's versions are checked regardless of announcements.
    contact
        Where Redis's answers are recorded (and its absence, by this thread).

    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        channels: Mapping[str, str],
        refresh: Callable[[str, ReloadReason], None],
        check_seconds: float,
        contact: RedisContact,
    ) -> None:
        self._client = client
        self._channels = dict(channels)
        self._models = list(self._channels.values())
        self._refresh = refresh
        self._check_seconds = check_seconds
        self._contact = contact
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """Whether ``start`` was called."""
        return self._thread is not None

    def start(self, wait: bool) -> None:
        """Start the thread; with ``wait``, subscribe and refresh every model here first.

        Raises
        ------
        ServiceUnavailable
            With ``wait``, when Redis does not answer.

        """
        pubsub = None
        if wait:
            try:
                # Subscribed before loading: every checkpoint written after the load is heard.
                pubsub = self._subscribe()
                self._refresh_all("initial")
            except (redis.RedisError, RedisClusterException) as exc:
                _close_quietly(pubsub)
                raise ServiceUnavailable(
                    f"Redis does not answer ({exc}); the lookup cannot load its models"
                ) from None
        self._thread = threading.Thread(
            target=self._run, args=(pubsub,), name="livelearn-lookup", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ask the thread to stop and wait for it up to ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _refresh_all(self, reason: ReloadReason) -> None:
        for name in self._models:
            self._refresh(name, reason)

    def _subscribe(self) -> PubSub:
        # redis-py typed pubsub() in 8.2; before that the call is untyped.
        pubsub: PubSub = self._client.pubsub(  # type: ignore[no-untyped-call, unused-ignore]
            ignore_subscribe_messages=True
        )
        if isinstance(pubsub, ClusterPubSub):
            pubsub.ssubscribe(*self._channels)
        else:
            pubsub.subscribe(*self._channels)
        return pubsub

    def _run(self, pubsub: PubSub | None) -> None:
        """Listen for announcements and check versions periodically; reconnect with backoff."""
        loaded = pubsub is not None
        backoff = _BACKOFF_FIRST
        next_check = time.monotonic() + self._check_seconds
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._subscribe()
                    # Whatever was announced before the subscription (or while Redis was
                    # away) is caught by checking every version now.
                    self._refresh_all("poll" if loaded else "initial")
                    loaded = True
                    backoff = _BACKOFF_FIRST
                    next_check = time.monotonic() + self._check_seconds
                due = self._announced(pubsub)
                if time.monotonic() >= next_check:
                    for name in self._models:
                        due.setdefault(name, "poll")
                    next_check = time.monotonic() + self._check_seconds
                for name, reason in due.items():
                    self._refresh(name, reason)
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                if self._contact.ok:
                    log.warning(
                        "Redis is away (%s); serving from memory and retrying",
                        exc,
                        extra={"fields": {"models": list(self._models)}},
                    )
                self._contact.ok = False
                _close_quietly(pubsub)
                pubsub = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception:
                log.exception("lookup reload failed; retrying")
                _close_quietly(pubsub)
                pubsub = None
                self._stop.wait(_BACKOFF_MAX)
        _close_quietly(pubsub)

    def _announced(self, pubsub: PubSub) -> dict[str, ReloadReason]:
        """Models announced on their channels since the last call: model -> reload reason."""
        due: dict[str, ReloadReason] = {}
        message = _next_message(pubsub, _LISTEN_SECONDS)
        while message is not None:
            if message.get("type") in ("message", "smessage"):
                channel = message["channel"]
                name = self._channels.get(
                    channel.decode() if isinstance(channel, bytes) else str(channel)
                )
                if name is not None:
                    due[name] = _reason(message["data"], due.get(name))
            message = _next_message(pubsub, 0)
        if due:
            self._contact.seen()
        return due


def _next_message(pubsub: PubSub, timeout: float) -> dict[str, Any] | None:
    """The next message of a channel (sharded on a cluster), or None after ``timeout``."""
    if isinstance(pubsub, ClusterPubSub):
        sharded: dict[str, Any] | None = pubsub.get_sharded_message(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True, timeout=timeout
        )
        return sharded
    message: dict[str, Any] | None = pubsub.get_message(timeout=timeout)
    return message


def _reason(data: bytes | str, earlier: ReloadReason | None) -> ReloadReason:
    """``pin`` for a pin or follow announcement, else ``announce``; a pin wins in a burst."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if earlier == "pin" or (isinstance(body, dict) and "pin" in body):
        return "pin"
    return "announce"


def _close_quietly(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
            pubsub.close()
