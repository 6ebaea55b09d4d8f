"""Many shards on one worker: progress that ends in dead letters is checkpointed like any
other, on every partition, while the worker runs (not only when it stops)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.integration.conftest import CONSUMERS, encode, phishing_events, produce, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 64
BAD = [b"{not json", b'{"id": "x", "features": [1, 2]}']


@pytest.mark.parametrize("consumer", [CONSUMERS["child-fetcher"], CONSUMERS["confluent"]])
def test_64_partitions_ending_in_dead_letters_are_checkpointed_past_them(
    make_topic: Any, deploy: Any, consumer: dict[str, Any]
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    dep = deploy(
        topic,
        settings={"kafka": consumer},
        checkpoint={"every_events": 10_000, "every_seconds": 0.5},
    )
    # Each partition gets 19 events, then its last two records are dead letters.
    events = encode(phishing_events(n=19 * PARTITIONS))
    values: list[bytes | None] = [*events, *(BAD[0] for _ in range(PARTITIONS))]
    values += [BAD[1] for _ in range(PARTITIONS)]
    produce(dep.bootstrap, topic, values, partitions=PARTITIONS)
    end = len(values) // PARTITIONS
    worker = dep.start_worker()

    def all_past_the_tail() -> bool:
        return all(dep.next_offset(p) == end for p in range(PARTITIONS))

    wait_for(
        all_past_the_tail,
        120,
        "every shard checkpointed past its dead letters",
        context=worker.tail,
    )
    # The lag the worker reports agrees with its checkpoints: nothing left on any partition.
    lags = re.findall(
        rf'livelearn_consumer_lag_events{{partition="\d+",topic="{topic}"}} (\S+)', worker.metrics()
    )
    assert len(lags) == PARTITIONS and {float(v) for v in lags} == {0.0}
    for p in range(PARTITIONS):
        assert dep.stats(p)["events_learned"] == 19
    assert worker.terminate() == 0, worker.tail()
