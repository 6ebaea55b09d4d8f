"""What differs between a single Redis server and Redis Cluster, for the store's own use.

The store takes either client. On a cluster a command runs on the node serving its keys'
slot, so the helpers here route what has no single slot: reading many keys of several
models, listing keys by pattern, and running a write and its ``WAIT`` on one connection
(``WAIT`` counts the replicas that acknowledged the writes of the connection it is sent on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

__all__ = ["Client", "address", "get_many", "is_cluster", "keys_matching", "node_client"]

Client = redis.Redis | RedisCluster


def is_cluster(client: Client) -> bool:
    """Whether ``client`` talks to Redis Cluster."""
    return isinstance(client, RedisCluster)


def node_client(client: Client, key: str) -> redis.Redis:
    """A client of the one server that holds ``key``: ``client`` itself on a single server,
    the master serving the key's slot on a cluster (as the client's slot map says)."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        if node is None or node.redis_connection is None:
            client.nodes_manager.initialize()
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        connection: redis.Redis = node.redis_connection
        return connection
    return client


def get_many(client: Client, keys: Sequence[str]) -> list[bytes | None]:
    """The values of ``keys``, in their order (one MGET per slot on a cluster)."""
    if isinstance(client, RedisCluster):
        return list(client.mget_nonatomic(list(keys)))
    values: list[bytes | None] = client.mget(list(keys))  # type: ignore[assignment]
    return values


def keys_matching(client: Client, pattern: str) -> list[str]:
    """Every key matching the glob ``pattern`` (every master's, on a cluster)."""
    options: dict[str, Any] = {"match": pattern, "count": 1000}
    if isinstance(client, RedisCluster):
        options["target_nodes"] = RedisCluster.PRIMARIES
    return sorted(
        k.decode() if isinstance(k, bytes) else str(k) for k in client.scan_iter(**options)
    )


def address(client: Client) -> str:
    """Where ``client`` connects, without credentials: ``host:port/db``, a socket path, or
    a cluster's first seed."""
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]
        first = nodes[0].name if nodes else "?"
        return f"cluster {first} (+{max(0, len(nodes) - 1)} nodes)"
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{where}/{kwargs.get('db', 0)}"
