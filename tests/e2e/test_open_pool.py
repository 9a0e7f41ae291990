"""An open pool admits a volunteer that brings no invite; an invite brought anyway is still checked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from app.profile import quick_profile
from app.volunteer import Volunteer, VolunteerConfig
from core.errors import AuthFailed
from core.identity import Identity, create_invite
from server.config import CoordinatorConfig
from server.coordinator import Coordinator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def open_coordinator(tiny_model, tmp_path: Path):  # noqa: ANN001, ANN201
    # Plain ws on loopback: these tests are about admission on the server; with TLS the
    # volunteer would already refuse a forged invite itself (tests/e2e/test_tls.py).
    coord = Coordinator(
        CoordinatorConfig(data_dir=tmp_path / "coord", port=0, settle_s=0.1, open_pool=True, insecure_loopback=True), tiny_model
    )
    await coord.start()
    yield coord
    await coord.stop()


def volunteer(tmp_path: Path, name: str, *, url: str, invite: str | None = None) -> Volunteer:
    profile = quick_profile(memory_bytes=2**30, name=name)
    return Volunteer(VolunteerConfig(data_dir=tmp_path / name, url=url, invite=invite, name=name, profile=profile,
                                     insecure_loopback=True))


async def test_a_volunteer_without_an_invite_joins_an_open_pool(open_coordinator: Coordinator, tmp_path: Path) -> None:
    v = volunteer(tmp_path, "walk-in", url=open_coordinator.ws_url)
    task = asyncio.create_task(v.run())
    try:
        for _ in range(300):
            if v.node_id in open_coordinator.pool.links:
                break
            await asyncio.sleep(0.02)
        assert v.node_id in open_coordinator.pool.links
        assert open_coordinator.registry.member(v.node_id) is not None
    finally:
        await open_coordinator.pool.links[v.node_id].channel.bye("test over")
        await asyncio.wait_for(task, 10)


async def test_an_open_pool_still_refuses_a_forged_invite(open_coordinator: Coordinator, tmp_path: Path) -> None:
    forged = create_invite(Identity.generate(), pool_name="x", addresses=[open_coordinator.ws_url], ttl_s=60, max_uses=None, now=time.time())
    with pytest.raises(AuthFailed):
        await volunteer(tmp_path, "forger", url=open_coordinator.ws_url, invite=forged).run()
    for _ in range(100):
        if any(e["kind"] == "refused" for e in open_coordinator.pool.events.entries):
            break
        await asyncio.sleep(0.02)
    refusals = [e["text"] for e in open_coordinator.pool.events.entries if e["kind"] == "refused"]
    assert refusals and "invite" in refusals[-1], refusals
