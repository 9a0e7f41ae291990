"""Admission and bad input over real websockets: refusals are clear on both sides, nobody crashes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from app.profile import quick_profile
from app.volunteer import Volunteer, VolunteerConfig
from core.errors import AuthFailed, ProtocolViolation
from core.identity import Identity, create_invite
from core.protocol.frames import encode_frame
from server.config import CoordinatorConfig
from server.coordinator import Coordinator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def coordinator(tiny_model, tmp_path: Path):  # noqa: ANN201
    coord = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", port=0, settle_s=0.1), tiny_model)
    await coord.start()
    yield coord
    await coord.stop()


def volunteer(tmp_path: Path, name: str, *, invite: str | None = None, url: str | None = None) -> Volunteer:
    profile = quick_profile(memory_bytes=2**30, name=name)
    return Volunteer(VolunteerConfig(data_dir=tmp_path / name, url=url, invite=invite, name=name, profile=profile))


async def refused_reason(coord: Coordinator) -> str:
    for _ in range(50):
        refused = [e["text"] for e in coord.pool.events.entries if e["kind"] == "refused"]
        if refused:
            return refused[-1]
        import asyncio

        await asyncio.sleep(0.02)
    raise AssertionError("the coordinator logged no refusal")


async def test_valid_invite_joins_and_member_rejoins_without_one(coordinator: Coordinator, tmp_path: Path) -> None:
    import asyncio

    v = volunteer(tmp_path, "good", invite=coordinator.invite(ttl_s=60, max_uses=1))
    task = asyncio.create_task(v.run())
    for _ in range(200):
        if coordinator.pool.links:
            break
        await asyncio.sleep(0.02)
    assert v.node_id in coordinator.pool.links
    await coordinator.pool.links[v.node_id].channel.bye("test over")
    await asyncio.wait_for(task, 10)
    # Same key, no invite: a member rejoins; the single-use invite is already spent for others.
    again = volunteer(tmp_path, "good", url=coordinator.ws_url)
    task = asyncio.create_task(again.run())
    for _ in range(200):
        if again.node_id in coordinator.pool.links and not coordinator.pool.links[again.node_id].closed.is_set():
            break
        await asyncio.sleep(0.02)
    assert again.node_id in coordinator.pool.links
    await coordinator.pool.links[again.node_id].channel.bye("test over")
    await asyncio.wait_for(task, 10)


async def test_reused_single_use_invite_is_refused(coordinator: Coordinator, tmp_path: Path) -> None:
    import asyncio

    invite = coordinator.invite(ttl_s=60, max_uses=1)
    first = volunteer(tmp_path, "first", invite=invite)
    task = asyncio.create_task(first.run())
    for _ in range(200):
        if coordinator.pool.links:
            break
        await asyncio.sleep(0.02)
    with pytest.raises(AuthFailed, match="already been used"):
        await volunteer(tmp_path, "second", invite=invite).run()
    task.cancel()


async def test_forged_invite_is_refused_on_both_sides(coordinator: Coordinator, tmp_path: Path) -> None:
    impostor = Identity.generate()
    forged = create_invite(
        impostor, pool_name="fake", addresses=[coordinator.ws_url], ttl_s=600, max_uses=None, now=time.time()
    )
    with pytest.raises(AuthFailed) as info:
        await volunteer(tmp_path, "forger", invite=forged).run()
    assert "refused" in str(info.value)
    assert "pool" in (await refused_reason(coordinator)).lower()
    assert not coordinator.pool.links


async def test_expired_invite_is_refused_on_both_sides(coordinator: Coordinator, tmp_path: Path) -> None:
    expired = create_invite(
        coordinator.identity, pool_name="p", addresses=[coordinator.ws_url], ttl_s=60, max_uses=None, now=time.time() - 3600
    )
    with pytest.raises(AuthFailed, match="expired"):
        await volunteer(tmp_path, "late", invite=expired).run()
    assert "expired" in await refused_reason(coordinator)


async def test_missing_invite_is_refused(coordinator: Coordinator, tmp_path: Path) -> None:
    with pytest.raises(AuthFailed, match="invite"):
        await volunteer(tmp_path, "stranger", url=coordinator.ws_url).run()


@pytest.mark.parametrize(
    "payload",
    [
        b"not a frame at all",
        b"BFLY\x01" + (10**9).to_bytes(4, "little") + b"{}",
        encode_frame("hello", {"protocol_version": 1})[:-3] + b"\xff\xff\xff",
        b"BFLY\x01" + (30).to_bytes(4, "little") + json.dumps({"kind": "forward", "tensors": [{"name": "x", "dtype": "float32", "shape": [10**12]}]}).encode()[:30],
    ],
)
async def test_malformed_frames_close_the_connection_not_the_coordinator(coordinator: Coordinator, payload: bytes) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(coordinator.ws_url, proxy=None) as ws:
            await ws.send_bytes(payload)
            msg = await ws.receive(timeout=10)
            while msg.type == aiohttp.WSMsgType.BINARY:  # the Error frame explaining the refusal
                msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code in (1008, 1009, 4001)
        async with http.get(coordinator.url + "/healthz") as response:
            assert response.status == 200


async def test_oversized_frame_is_refused(coordinator: Coordinator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(coordinator.ws_url, proxy=None, max_msg_size=0) as ws:
            try:
                await ws.send_bytes(b"\0" * (65 * 2**20))
                msg = await ws.receive(timeout=20)
                while msg.type == aiohttp.WSMsgType.BINARY:
                    msg = await ws.receive(timeout=20)
                assert ws.close_code == 1009
            except ConnectionError:
                pass  # the coordinator hung up while the frame was still being written
        assert "exceeds limit" in await refused_reason(coordinator)
        async with http.get(coordinator.url + "/healthz") as response:
            assert response.status == 200


async def test_volunteer_refuses_a_coordinator_that_sends_garbage(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the volunteer's hello
        await ws.send_bytes(b"BFLY\x01\xff\xff\xff\x7f garbage")
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        with pytest.raises(ProtocolViolation):
            await volunteer(tmp_path, "victim", url=f"ws://127.0.0.1:{port}/ws").run()
    finally:
        await runner.cleanup()
