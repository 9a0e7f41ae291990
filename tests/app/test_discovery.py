"""Pools on the network as a fold over found / updated / lost events, and reading a resolved service."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.discovery import (
    DiscoveredPool,
    DiscoveredPools,
    PoolFound,
    PoolLost,
    PoolUpdated,
    apply,
    pick_address,
    pool_from_service,
)
from core.discovery import PoolAdvert, encode_txt
from core.errors import ProtocolViolation
from core.identity import Identity
from core.types import PoolId

IDS = sorted(PoolId(Identity.generate().fingerprint) for _ in range(3))


def pool(name: str, pool_id: str, *, service: str | None = None, volunteers: int = 0, host: str = "10.0.0.2") -> DiscoveredPool:
    advert = PoolAdvert(pool_id=PoolId(pool_id), pool_name=name, model="m", invite_required=False, volunteers=volunteers)
    return DiscoveredPool(service=service or f"{name}._butterfly._tcp.local.", advert=advert, host=host, port=8765)


def fold(*events: object) -> DiscoveredPools:
    state = DiscoveredPools()
    for event in events:
        state = apply(state, event)  # type: ignore[arg-type]
    return state


def test_found_pools_are_listed_by_name() -> None:
    state = fold(PoolFound(pool("beta", IDS[0])), PoolFound(pool("Alpha", IDS[1])))
    assert [p.name for p in state.pools] == ["Alpha", "beta"]
    assert state.by_pool_id(IDS[0]) is not None and state.by_pool_id(IDS[2]) is None


def test_update_replaces_and_loss_removes() -> None:
    state = fold(PoolFound(pool("a", IDS[0])), PoolUpdated(pool("a", IDS[0], volunteers=4)))
    assert [p.advert.volunteers for p in state.pools] == [4]
    state = apply(state, PoolLost("a._butterfly._tcp.local."))
    assert state.pools == ()


def test_an_update_for_an_unknown_service_counts_as_found() -> None:
    assert len(fold(PoolUpdated(pool("a", IDS[0]))).pools) == 1


def test_losing_an_unknown_service_changes_nothing() -> None:
    state = fold(PoolFound(pool("a", IDS[0])))
    assert apply(state, PoolLost("other._butterfly._tcp.local.")) is state


def test_a_pool_that_renamed_itself_is_listed_once() -> None:
    state = fold(PoolFound(pool("old name", IDS[0])), PoolFound(pool("new name", IDS[0])))
    assert [p.name for p in state.pools] == ["new name"]


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["127.0.0.1", "192.168.1.4"], "192.168.1.4"),
        (["fe80::1", "127.0.0.1"], "127.0.0.1"),
        (["169.254.3.3", "fd00::5"], "fd00::5"),
        (["junk"], None),
        ([], None),
    ],
)
def test_pick_address_prefers_routable_ipv4(addresses: list[str], expected: str | None) -> None:
    assert pick_address(addresses) == expected


def test_pool_from_service_reads_a_valid_answer_and_refuses_bad_ones() -> None:
    advert = PoolAdvert(pool_id=IDS[0], pool_name="p", model="m", invite_required=True, ws_path="/ws")
    found = pool_from_service("p._butterfly._tcp.local.", encode_txt(advert), ["fd00::1"], 9000)
    assert found.advert == advert and found.ws_url == "wss://[fd00::1]:9000/ws"
    development = replace(advert, tls=False)
    plain = pool_from_service("p._butterfly._tcp.local.", encode_txt(development), ["127.0.0.1"], 9000)
    assert plain.advert.tls is False and plain.ws_url == "ws://127.0.0.1:9000/ws"
    with pytest.raises(ProtocolViolation, match="address"):
        pool_from_service("p", encode_txt(advert), [], 9000)
    with pytest.raises(ProtocolViolation, match="port"):
        pool_from_service("p", encode_txt(advert), ["10.0.0.1"], 0)
    with pytest.raises(ProtocolViolation, match="lacks"):
        pool_from_service("p", {b"name": b"x"}, ["10.0.0.1"], 9000)
