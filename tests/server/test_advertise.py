"""The coordinator's mDNS advert: what it says, where, and that browsers see it come, change and go."""

from __future__ import annotations

import asyncio
import os

import pytest

from app.discovery import PoolBrowser, PoolEvent, PoolFound, PoolLost, PoolUpdated
from core.discovery import PoolAdvert
from core.identity import Identity
from core.types import PoolId
from server.advertise import PoolAdvertiser, advert_addresses, build_advert

POOL_ID = Identity.generate().fingerprint


def test_build_advert_counts_what_the_pool_still_needs() -> None:
    mib = 1 << 20
    advert = build_advert(pool_id=POOL_ID, pool_name="Lab\npool", model_name="m" * 200, open_pool=True, layers=30,
                          model_bytes=540 * mib, volunteer_memory=[100 * mib, 200 * mib])
    assert advert.pool_name == "Lab pool"
    assert len(advert.model) == 96
    assert not advert.invite_required
    assert (advert.volunteers, advert.layers, advert.model_mib, advert.needed_mib) == (2, 30, 540, 240)
    covered = build_advert(pool_id=POOL_ID, pool_name="", model_name="", open_pool=False, layers=0,
                           model_bytes=mib + 1, volunteer_memory=[4 * mib])
    assert covered.needed_mib == 0 and covered.model_mib == 2 and covered.invite_required
    assert covered.pool_name == "Butterfly pool" and covered.model == "unknown model"


@pytest.mark.parametrize(
    ("host", "interfaces", "expected"),
    [
        ("127.0.0.1", (), ["127.0.0.1"]),
        ("localhost", (), ["127.0.0.1"]),
        ("192.168.1.5", (), ["192.168.1.5"]),
        ("0.0.0.0", (), ["10.0.0.2", "192.168.1.5"]),
        ("0.0.0.0", ("10.9.9.9", "10.9.9.9"), ["10.9.9.9"]),
        ("127.0.0.1", ("10.1.1.1",), ["10.1.1.1"]),
    ],
)
def test_advert_addresses(host: str, interfaces: tuple[str, ...], expected: list[str]) -> None:
    assert advert_addresses(host, interfaces, lambda: ["127.0.0.1", "10.0.0.2", "192.168.1.5"]) == expected


def test_a_wildcard_host_with_only_loopback_advertises_loopback() -> None:
    assert advert_addresses("0.0.0.0", (), lambda: ["127.0.0.1"]) == ["127.0.0.1"]


async def wait_for(events: list[PoolEvent], kind: type, *, pool_id: str | None = None, timeout: float = 8.0) -> PoolEvent:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for event in events:
            if isinstance(event, kind) and (pool_id is None or getattr(event, "pool", None) is None or event.pool.pool_id == pool_id):
                events.remove(event)
                return event
        assert asyncio.get_running_loop().time() < deadline, f"no {kind.__name__} within {timeout} s: {events}"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_advert_is_found_updated_and_withdrawn_on_loopback() -> None:
    state = {"volunteers": 0}

    def describe() -> PoolAdvert:
        return PoolAdvert(pool_id=PoolId(POOL_ID), pool_name=f"Advert test {os.getpid()}", model="tiny",
                          invite_required=False, volunteers=state["volunteers"], layers=6)

    events: list[PoolEvent] = []
    mine = lambda e: isinstance(e, PoolLost) or e.pool.pool_id == POOL_ID  # noqa: E731 - other test runs may advertise too
    browser = PoolBrowser(lambda e: events.append(e) if mine(e) else None, interfaces=["127.0.0.1"])
    await browser.start()
    advertiser = PoolAdvertiser(describe=describe, port=4321, addresses=["127.0.0.1"], refresh_s=0.1)
    try:
        await advertiser.start()
        found = await wait_for(events, PoolFound, pool_id=POOL_ID)
        assert isinstance(found, PoolFound)
        assert found.pool.ws_url == "wss://127.0.0.1:4321/ws"
        assert found.pool.advert == describe()
        state["volunteers"] = 2
        updated = await wait_for(events, PoolUpdated, pool_id=POOL_ID)
        assert isinstance(updated, PoolUpdated) and updated.pool.advert.volunteers == 2
    finally:
        await advertiser.stop()
    lost = await wait_for(events, PoolLost)
    assert isinstance(lost, PoolLost) and lost.service == found.pool.service
    await browser.stop()
