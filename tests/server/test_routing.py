"""Which pipeline a new session joins."""

from __future__ import annotations

import math

import pytest

from core.errors import ConfigError, PoolUnavailable
from server.routing import route


@pytest.mark.parametrize(
    ("loads", "max_sessions", "expected"),
    [
        ([(1.0, 0)], None, 0),
        ([(1.0, 3), (2.0, 0)], None, 1),  # 4 * 1.0 > 1 * 2.0
        ([(1.0, 1), (2.0, 0)], None, 1),  # 2.0 == 2.0: fewer active sessions wins
        ([(1.0, 0), (1.0, 0)], None, 0),  # full tie: lower index
        ([(0.5, 2), (1.0, 0)], None, 1),
        ([(1.0, 4), (5.0, 0)], 4, 1),  # the first pipeline's KV budget is full
        ([(math.inf, 0), (3.0, 9)], None, 1),
        ([(math.nan, 0), (3.0, 0)], None, 1),
    ],
)
def test_route_picks_soonest_finish(
    loads: list[tuple[float, int]], max_sessions: int | None, expected: int
) -> None:
    assert route(loads, max_sessions=max_sessions) == expected


@pytest.mark.parametrize("loads", [[], [(math.inf, 0)], [(1.0, 2)]])
def test_route_without_room_raises(loads: list[tuple[float, int]]) -> None:
    with pytest.raises(PoolUnavailable):
        route(loads, max_sessions=2)


def test_route_rejects_negative_sessions() -> None:
    with pytest.raises(ConfigError):
        route([(1.0, -1)])
