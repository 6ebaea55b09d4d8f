"""`finish_join`: a group join kafka-python 3 began and lost track of is asked for again;
nothing else is (issue 16, item 5; tests/integration/test_rejoin.py drives a real broker)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka.structs import MemberState

from livelearn.stream.fetcher import finish_join


class FakeCoordinator:
    def __init__(self, state: MemberState, need_rejoin: bool) -> None:
        self.state = state
        self._need_rejoin = need_rejoin
        self.requested = 0

    def need_rejoin(self) -> bool:
        return self._need_rejoin

    def request_rejoin(self) -> None:
        self.requested += 1
        self._need_rejoin = True


def test_a_join_left_rebalancing_with_no_reason_to_go_on_is_asked_for_again() -> None:
    coordinator = FakeCoordinator(MemberState.REBALANCING, need_rejoin=False)
    consumer = SimpleNamespace(_coordinator=coordinator)
    assert finish_join(consumer) is True
    assert coordinator.requested == 1
    assert finish_join(consumer) is False  # the next poll finishes it: asked once
    assert coordinator.requested == 1


@pytest.mark.parametrize(
    ("state", "need_rejoin"),
    [
        (MemberState.STABLE, False),  # a member: nothing to do
        (MemberState.STABLE, True),  # a rejoin the next poll makes anyway
        (MemberState.UNJOINED, True),  # not joined yet, or dropped: the next poll joins
        (MemberState.REBALANCING, True),  # a join in flight that the next poll finishes
    ],
)
def test_anything_else_is_left_to_kafka_python(state: MemberState, need_rejoin: bool) -> None:
    coordinator = FakeCoordinator(state, need_rejoin)
    assert finish_join(SimpleNamespace(_coordinator=coordinator)) is False
    assert coordinator.requested == 0


def test_a_client_without_a_coordinator_is_left_alone() -> None:
    assert finish_join(SimpleNamespace()) is False
