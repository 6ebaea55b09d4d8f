"""Redis clients from settings, for the worker, the lookup and the command line."""

from __future__ import annotations

from typing import Any

import redis
from redis.retry import Retry

from livelearn.errors import ServiceUnavailable
from livelearn.settings import Settings

__all__ = ["connect_redis", "redis_client"]


def redis_client(settings: Settings, retry: Retry | None = None) -> redis.Redis:
    """A Redis client from settings, not connected yet; ``retry`` replaces redis-py's default.

    Raises
    ------
    ConfigError
        When ``redis.url`` is not set.
    """
    url = settings.require_redis_url()
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    options: dict[str, Any] = {} if retry is None else {"retry": retry}
    return redis.Redis.from_url(
        url,
        password=password,
        socket_timeout=settings.redis.socket_timeout_s,
        socket_connect_timeout=settings.redis.socket_timeout_s,
        **options,
    )


def connect_redis(settings: Settings) -> redis.Redis:
    """A Redis client from settings; ServiceUnavailable when it does not answer."""
    url = settings.require_redis_url()
    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(
            f"Redis at redis.url={_redact(url)} does not answer ({exc}); "
            "start it or fix the setting"
        ) from None
    return client


def _redact(url: str) -> str:
    """A URL without its password.

    >>> _redact("redis://user:s3cret@host:6379/0")
    'redis://user:***@host:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
