"""``redis.url`` names one server, a cluster or a Sentinel; a bad one fails at start-up
naming the setting and the fix."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from livelearn.errors import ConfigError, ServiceUnavailable
from livelearn.settings import Settings
from livelearn.store.connection import parse_redis_url, redis_client


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://host:notaport", "is not host:port"),
        ("redis+cluster://a:1,b:2/3", "Redis Cluster has only database 0"),
        ("redis+sentinel://s1:26379", "names no Sentinel service"),
        ("redis+sentinel://s1:26379/mymaster/x", "database 'x' is not a number"),
    ],
    ids=["no-node", "bad-port", "cluster-db", "no-service", "bad-db"],
)
def test_a_bad_url_names_the_setting(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"redis\.url") as info:
        parse_redis_url(url)
    assert message in str(info.value)


def test_the_password_never_shows_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url("redis+cluster://u:s3cret@a:1/2")
    assert "s3cret" not in str(info.value) and "u:***@" in str(info.value)


def test_a_sentinel_url_makes_a_client_of_the_master_it_names() -> None:
    client = redis_client(Settings(redis={"url": "redis+sentinel://127.0.0.1:1,127.0.0.2:2/ll/3"}))
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "ll"
    assert pool.connection_kwargs["db"] == 3


def test_a_cluster_that_does_not_answer_is_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match=r"Redis Cluster at redis\.url=redis"):
        redis_client(
            Settings(redis={"url": "redis+cluster://127.0.0.1:1", "socket_timeout_s": 0.5})
        )
