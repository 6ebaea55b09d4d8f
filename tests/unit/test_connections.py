"""The API's connection table: a cap per client, and room made from the client holding the most."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from livelearn.serving._connections import Activity, ConnectionTable, client_key
from livelearn.serving._server import guarded_protocol
from livelearn.serving.metrics import ServingMetrics
from livelearn.settings import ServingSettings


@dataclass(eq=False)  # hashed by identity, as the server's protocol objects
class Conn:
    name: str
    activity: Activity = "idle"


def admit_all(table: ConnectionTable[Conn], client: str, n: int, activity: Activity) -> list[Conn]:
    conns = [Conn(f"{client}{i}", activity) for i in range(n)]
    for conn in conns:
        assert table.admit(conn, client).refused is None
    return conns


def test_a_client_past_its_cap_is_refused_and_others_are_not() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=1000, per_client=64)
    held = admit_all(table, "10.0.0.1", 64, "idle")
    refused = [table.admit(Conn(f"extra{i}"), "10.0.0.1") for i in range(936)]
    assert {a.refused for a in refused} == {"too_many_connections"}
    assert table.count("10.0.0.1") == 64
    other = table.admit(Conn("b"), "10.0.0.2")
    assert other.refused is None and other.evict is None
    table.remove(held[0])  # one closes: the client may open one more
    assert table.admit(Conn("again"), "10.0.0.1").refused is None


def test_a_full_table_gives_up_a_connection_of_the_client_holding_the_most() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=6, per_client=4)
    small = admit_all(table, "small", 2, "idle")
    big_head = admit_all(table, "big", 2, "head")
    big_idle = admit_all(table, "big", 2, "idle")
    # The client holding the most gives up its oldest idle connection before any head.
    first = table.admit(Conn("new1"), "new")
    assert first.refused is None and first.evict is big_idle[0]
    second = table.admit(Conn("new2"), "new")
    assert second.evict is big_idle[1]
    # "big" now holds 2, as "small" and "new" do: the first of them, "small", gives up
    # an idle one.
    third = table.admit(Conn("new3"), "other")
    assert third.evict is small[0]
    assert len(table) == 6
    assert [table.count(c) for c in ("small", "big", "new", "other")] == [1, 2, 2, 1]
    assert big_head[0] not in {first.evict, second.evict, third.evict}


def test_a_head_goes_when_no_idle_connection_is_left() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=3, per_client=3)
    busy = admit_all(table, "a", 1, "busy")
    heads = admit_all(table, "a", 2, "head")
    admission = table.admit(Conn("b"), "b")
    assert admission.refused is None and admission.evict is heads[0]
    assert busy[0] is not admission.evict


def test_when_every_request_is_in_progress_the_new_connection_is_refused() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=3, per_client=2)
    admit_all(table, "a", 2, "busy")
    admit_all(table, "b", 1, "busy")
    assert table.admit(Conn("c"), "c").refused == "over_capacity"
    assert len(table) == 3 and table.count("c") == 0


def test_remove_forgets_a_connection_once() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=2, per_client=2)
    (conn,) = admit_all(table, "a", 1, "idle")
    table.remove(conn)
    table.remove(conn)  # closed twice (evicted, then its connection lost): no error
    table.remove(Conn("never admitted"))
    assert len(table) == 0 and table.count("a") == 0


def test_an_evicted_connection_is_no_longer_held() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=1, per_client=1)
    (old,) = admit_all(table, "a", 1, "idle")
    admission = table.admit(Conn("b"), "b")
    assert admission.evict is old and table.count("a") == 0
    table.remove(old)  # its connection is lost later
    assert len(table) == 1 and table.count("b") == 1


def test_one_client_with_a_thousand_connections_leaves_room_for_the_rest() -> None:
    table: ConnectionTable[Conn] = ConnectionTable(limit=1000, per_client=64)
    for i in range(1000):
        table.admit(Conn(f"h{i}", "head"), "attacker")
    others = [table.admit(Conn(f"c{i}"), f"10.1.{i // 250}.{i % 250}") for i in range(900)]
    assert all(a.refused is None and a.evict is None for a in others)
    assert table.count("attacker") == 64 and len(table) == 964


@pytest.mark.parametrize(
    ("limit", "per_client"), [(10, 0), (10, 11)], ids=["no-connection", "above-limit"]
)
def test_a_cap_outside_the_limit_is_refused(limit: int, per_client: int) -> None:
    with pytest.raises(ValueError, match="per_client"):
        ConnectionTable(limit, per_client)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:127.0.0.2", "127.0.0.2"),
        ("::1", "::/64"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
        (None, "local"),
    ],
    ids=["v4", "v4-mapped", "v6-loopback", "v6", "same-64", "next-64", "zone", "odd", "unix"],
)
def test_client_key(host: str | None, key: str) -> None:
    assert client_key(host) == key


@pytest.mark.parametrize(
    ("serving", "per_client"),
    [({}, 64), ({"max_connections": 3}, 3), ({"max_connections_per_client": 1000}, 1000)],
    ids=["default", "lower-limit", "behind-a-proxy"],
)
def test_the_server_caps_a_client_at_most_at_its_limit(serving: dict, per_client: int) -> None:
    protocol = guarded_protocol(ServingSettings(**serving), ServingMetrics())
    assert protocol._table.per_client == per_client  # type: ignore[attr-defined]
