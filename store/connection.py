"""Redis clients from settings, for the worker, the lookup, the API and the command line.

``redis.url`` picks the kind of client, by its scheme:

- ``redis://host:port/db``, ``rediss://...`` and ``unix://...``: one server
  (``redis.Redis.from_url``);
- ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` with TLS): Redis
  Cluster (``redis.cluster.RedisCluster``), the nodes given being seeds from which the
  client learns the others; a database number, if any, must be 0;
- ``redis+sentinel://host:port[,host:port...]/service[/db]``: the master that Sentinel names
  for ``service`` (``redis.sentinel.Sentinel.master_for``), found again after a failover.

This module is the one place that makes clients: everything that talks to Redis takes
one made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from livelearn.errors import ConfigError, ServiceUnavailable
from livelearn.settings import Settings
from livelearn.store._client import Client
from livelearn.store.checkpoints import RedisCheckpointStore

__all__ = [
    "Client",
    "RedisTarget",
    "checkpoint_store",
    "connect_redis",
    "parse_redis_url",
    "redis_client",
]

_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
_SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class RedisTarget:
    """What a ``redis+cluster://`` or ``redis+sentinel://`` URL names."""

    kind: str  # "cluster" or "sentinel"
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool = False
    service: str = ""
    db: int = 0


def parse_redis_url(url: str) -> RedisTarget | None:
    """The cluster or Sentinel that ``url`` names; None for a one-server URL.

    Raises
    ------
    ConfigError
        The URL names a cluster or Sentinel badly (no node, a bad port, a database other
        than 0 on a cluster, no Sentinel service name).

    Examples
    --------
    >>> parse_redis_url("redis://localhost:6379/0") is None
    True
    >>> t = parse_redis_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    >>> t.kind, t.nodes
    ('cluster', (('10.0.0.1', 7000), ('10.0.0.2', 7001)))
    >>> t = parse_redis_url("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2")
    >>> t.kind, t.service, t.db, t.password
    ('sentinel', 'mymaster', 2, 'pw')

    """
    scheme, sep, rest = url.partition("://")
    if not sep or (scheme not in _CLUSTER_SCHEMES and scheme != _SENTINEL_SCHEME):
        return None
    creds, at, hosts_path = rest.rpartition("@")
    hosts, _, path = hosts_path.partition("/")
    path = path.split("?", 1)[0]
    username = password = None
    if at:
        user, _, secret = creds.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = []
    for item in filter(None, hosts.split(",")):
        parsed = urlsplit(f"//{item}")
        try:
            port = parsed.port or (26379 if scheme == _SENTINEL_SCHEME else 6379)
        except ValueError:
            port = -1
        if not parsed.hostname or port <= 0:
            raise ConfigError(f"redis.url: {item!r} is not host:port in {_shown(url)}")
        nodes.append((parsed.hostname, port))
    if not nodes:
        raise ConfigError(f"redis.url names no node: {_shown(url)}; write host:port[,host:port]")
    parts = [p for p in path.split("/") if p]
    if scheme == _SENTINEL_SCHEME:
        if not parts:
            raise ConfigError(
                f"redis.url {_shown(url)} names no Sentinel service: write "
                "redis+sentinel://host:port[,host:port]/service_name[/db]"
            )
        db = _db(parts[1] if len(parts) > 1 else "0", url)
        return RedisTarget("sentinel", tuple(nodes), username, password, service=parts[0], db=db)
    if parts and _db(parts[0], url) != 0:
        raise ConfigError(
            f"redis.url {_shown(url)} asks for database {parts[0]}: Redis Cluster has only "
            "database 0; drop the path"
        )
    return RedisTarget("cluster", tuple(nodes), username, password, _CLUSTER_SCHEMES[scheme])


def redis_client(settings: Settings, retry: Retry | None = None) -> Client:
    """A Redis client from settings; ``retry`` replaces redis-py's default.

    A one-server or Sentinel client connects on first use; a cluster client asks a seed
    node for the cluster's slots at once.

    Raises
    ------
    ConfigError
        When ``redis.url`` is not set or malformed.
    ServiceUnavailable
        When no seed node of a cluster answers.
    """
    url = settings.require_redis_url()
    target = parse_redis_url(url)
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    options: dict[str, Any] = {
        "socket_timeout": settings.redis.socket_timeout_s,
        "socket_connect_timeout": settings.redis.socket_timeout_s,
    }
    if retry is not None:
        options["retry"] = retry
    if target is None:
        return redis.Redis.from_url(url, password=password, **options)
    secret = password or target.password
    if target.kind == "sentinel":
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={
                "socket_timeout": settings.redis.socket_timeout_s,
                "socket_connect_timeout": settings.redis.socket_timeout_s,
            },
            **options,
        )
        master: redis.Redis = sentinel.master_for(
            target.service, username=target.username, password=secret, db=target.db
        )
        return master
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],  # type: ignore[no-untyped-call]
            username=target.username,
            password=secret,
            ssl=target.tls,
            **options,
        )
    except (redis.RedisError, RedisClusterException) as exc:
        raise ServiceUnavailable(
            f"Redis Cluster at redis.url={_shown(url)} does not answer ({exc}); start it or "
            "fix the setting"
        ) from None


def connect_redis(settings: Settings) -> Client:
    """A Redis client from settings; ServiceUnavailable when it does not answer."""
    url = settings.require_redis_url()
    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(
            f"Redis at redis.url={_shown(url)} does not answer ({exc}); start it or fix the setting"
        ) from None
    return client


def checkpoint_store(settings: Settings, client: Client) -> RedisCheckpointStore:
    """The checkpoint store over ``client`` as the settings say (prefix, ``WAIT``, the
    timelines' cap)."""
    return RedisCheckpointStore(
        client,
        settings.redis.key_prefix,
        wait_replicas=settings.redis.wait_replicas,
        wait_timeout_ms=settings.redis.wait_timeout(),
        timeline_entries=settings.redis.timeline_entries,
    )


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"redis.url {_shown(url)}: database {text!r} is not a number")
    return int(text)


def _shown(url: str) -> str:
    """A URL without its password.

    >>> _shown("redis://user:s3cret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> _shown("redis+cluster://:s3cret@a:1,b:2")
    'redis+cluster://:***@a:1,b:2'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
