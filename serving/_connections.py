"""Which connections the API holds, by client: a cap per client, and room made when full.

A connection is admitted when it opens, before any of its request is read. A client that
already holds ``per_client`` connections is refused; one arriving when ``limit`` are open
makes room by taking the place of another client's connection: one of the client that
holds the most, an idle one (it sent nothing since it opened or since its last answer)
before one still sending a request's head; a connection whose request is in progress is
never taken. When every connection has a request in progress, the new one is refused.

Clients are told apart by their address (an IPv6 client by its /64 network, as one host
is given a whole /64); behind a proxy every connection comes from the proxy's address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

__all__ = ["Activity", "Admission", "ConnectionTable", "Refusal", "client_key"]

# What a connection is doing: waiting for a request and having sent nothing of it
# ("idle"), sending a request's head ("head"), or having a request in progress ("busy").
Activity = Literal["idle", "head", "busy"]
# Why a connection was refused when it opened.
Refusal = Literal["too_many_connections", "over_capacity"]

# The order connections of one client are given up in: idle ones first.
_GIVE_UP: tuple[Activity, ...] = ("idle", "head")


class Connection(Protocol):
    """What the table needs of a connection: what it is doing now."""

    @property
    def activity(self) -> Activity:
        """What the connection is doing now."""


C = TypeVar("C", bound=Connection)


@dataclass(frozen=True)
class Admission(Generic[C]):
    """What ``ConnectionTable.admit`` decided: refused (and why), or admitted; then
    ``evict`` is a connection it took the place of, to be closed by the caller."""

    refused: Refusal | None = None
    evict: C | None = None


class ConnectionTable(Generic[C]):
    """The open connections of every client, at most ``limit`` in all and ``per_client``
    a client.

    >>> class Conn:
    ...     def __init__(self, name, activity="idle"):
    ...         self.name, self.activity = name, activity
    ...     def __repr__(self):
    ...         return self.name
    >>> table = ConnectionTable(limit=3, per_client=2)
    >>> a1, a2, a3, b1 = Conn("a1", "busy"), Conn("a2"), Conn("a3"), Conn("b1")
    >>> table.admit(a1, "a"), table.admit(a2, "a")
    (Admission(refused=None, evict=None), Admission(refused=None, evict=None))
    >>> table.admit(a3, "a")
    Admission(refused='too_many_connections', evict=None)
    >>> table.admit(b1, "b")
    Admission(refused=None, evict=None)
    >>> table.admit(Conn("c1"), "c")  # full: a's idle connection makes room
    Admission(refused=None, evict=a2)
    >>> table.count("a"), len(table)
    (1, 3)
    """

    def __init__(self, limit: int, per_client: int) -> None:
        if not 1 <= per_client <= limit:
            raise ValueError(f"per_client ({per_client}) must be between 1 and limit ({limit})")
        self.limit = limit
        self.per_client = per_client
        # Each client's connections, oldest first (dicts keep their insertion order).
        self._clients: dict[str, dict[C, None]] = {}
        self._client_of: dict[C, str] = {}

    def __len__(self) -> int:
        return len(self._client_of)

    def count(self, client: str) -> int:
        """Connections ``client`` holds."""
        return len(self._clients.get(client, ()))

    def admit(self, conn: C, client: str) -> Admission[C]:
        """Admit ``conn`` of ``client``, or refuse it; the caller closes what is to go."""
        if self.count(client) >= self.per_client:
            return Admission(refused="too_many_connections")
        evict = None
        if len(self) >= self.limit:
            evict = self._room()
            if evict is None:
                return Admission(refused="over_capacity")
            self.remove(evict)
        self._clients.setdefault(client, {})[conn] = None
        self._client_of[conn] = client
        return Admission(evict=evict)

    def remove(self, conn: C) -> None:
        """Forget ``conn`` (closed); nothing when it is not held."""
        client = self._client_of.pop(conn, None)
        if client is None:
            return
        held = self._clients[client]
        del held[conn]
        if not held:
            del self._clients[client]

    def _room(self) -> C | None:
        """The connection to give up for a new one: that of the client holding the most,
        idle before sending a head, oldest first; None when all have a request in progress."""
        # Only when the table is full; a scan of every client then is short next to the
        # connection's own accept and close.
        for held in sorted(self._clients.values(), key=len, reverse=True):
            for wanted in _GIVE_UP:
                for conn in held:
                    if conn.activity == wanted:
                        return conn
        return None


def client_key(host: str | None) -> str:
    """The key a client's connections are counted under: its address, an IPv4 client
    reached over IPv6 by its IPv4 address, an IPv6 client by its /64 network.

    >>> client_key("10.0.0.7"), client_key("::ffff:10.0.0.7")
    ('10.0.0.7', '10.0.0.7')
    >>> client_key("2001:db8:1:2:3:4:5:6"), client_key("2001:db8:1:2::9")
    ('2001:db8:1:2::/64', '2001:db8:1:2::/64')
    >>> client_key(None), client_key("")  # a Unix socket's peer has no address
    ('local', 'local')
    """
    if not host:
        return "local"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
