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
from core.identity import Identity, auth_transcript, create_invite, fingerprint, parse_invite
from core.protocol.frames import PROTOCOL_VERSION, encode_frame
from core.protocol.messages import Accepted, Auth, Challenge, Heartbeat, Hello
from core.protocol.session import ProtocolConnection, Role
from core.transport import Channel, ChannelClosed
from server.config import CoordinatorConfig
from server.coordinator import Coordinator

pytestmark = pytest.mark.timeout(120)


async def start_coordinator(model, tmp_path: Path, **config) -> Coordinator:  # noqa: ANN001, ANN003
    """A coordinator on loopback speaking plain ws (TLS has tests of its own, like live_pool's pools)."""
    settings = dict(data_dir=tmp_path / "coord", port=0, settle_s=0.1, insecure_loopback=True)
    settings.update(config)
    coord = Coordinator(CoordinatorConfig(**settings), model)
    await coord.start()
    return coord


@pytest.fixture
async def coordinator(tiny_model, tmp_path: Path):  # noqa: ANN201
    coord = await start_coordinator(tiny_model, tmp_path)
    yield coord
    await coord.stop()


def volunteer(tmp_path: Path, name: str, *, invite: str | None = None, url: str | None = None) -> Volunteer:
    profile = quick_profile(memory_bytes=2**30, name=name)
    return Volunteer(VolunteerConfig(
        data_dir=tmp_path / name, url=url, invite=invite, name=name, profile=profile, insecure_loopback=True
    ))


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


# --- invites, bans and connection limits ------------------------------------------------


async def wait_for_link(coord: Coordinator, node_id: str) -> None:
    import asyncio

    for _ in range(300):
        link = coord.pool.links.get(node_id)
        if link is not None and not link.closed.is_set():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{node_id} never connected")


async def test_a_revoked_invite_admits_nobody_new_but_its_members_stay(coordinator: Coordinator, tmp_path: Path) -> None:
    import asyncio

    invite = coordinator.invite(ttl_s=600)
    first = volunteer(tmp_path, "early", invite=invite)
    task = asyncio.create_task(first.run())
    await wait_for_link(coordinator, first.node_id)
    await coordinator.pool.links[first.node_id].channel.bye("test over")
    await asyncio.wait_for(task, 10)
    coordinator.registry.revoke_invite(parse_invite(invite).invite_id, time.time())

    with pytest.raises(AuthFailed, match="revoked"):
        await volunteer(tmp_path, "late", invite=invite).run()
    assert "revoked" in await refused_reason(coordinator)
    # The member it admitted before comes back with the same invite (members need none).
    again = volunteer(tmp_path, "early", invite=invite)
    task = asyncio.create_task(again.run())
    await wait_for_link(coordinator, again.node_id)
    await coordinator.pool.links[again.node_id].channel.bye("test over")
    await asyncio.wait_for(task, 10)


async def test_a_banned_key_is_refused_at_the_handshake(coordinator: Coordinator, tmp_path: Path) -> None:
    invite = coordinator.invite(ttl_s=600, max_uses=1)
    banned = volunteer(tmp_path, "mallory", invite=invite)
    coordinator.registry.ban(banned.node_id, "sent garbage", time.time())
    with pytest.raises(AuthFailed, match="banned"):
        await banned.run()
    assert "banned" in await refused_reason(coordinator)
    assert coordinator.registry.invite_uses(parse_invite(invite).invite_id) == 0  # refused before the invite counts
    assert banned.node_id not in coordinator.pool.links


async def test_a_silent_websocket_is_closed_when_the_handshake_times_out(tiny_model, tmp_path: Path) -> None:
    coord = await start_coordinator(tiny_model, tmp_path, handshake_timeout_s=0.5)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(coord.ws_url, proxy=None) as ws:
                started = time.monotonic()
                msg = await ws.receive(timeout=10)
                while msg.type == aiohttp.WSMsgType.BINARY:  # the Error frame saying why
                    msg = await ws.receive(timeout=10)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1008
                assert "handshake not finished within 0.5 s" in str(msg.extra)
                assert time.monotonic() - started < 8
        assert "handshake not finished" in await refused_reason(coord)
    finally:
        await coord.stop()


async def read_ws_frame(reader) -> tuple[int, bytes]:  # noqa: ANN001 - asyncio.StreamReader
    """One unmasked server frame: (opcode, payload)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(length)


async def open_raw_websocket(url: str):  # noqa: ANN201 - (StreamReader, StreamWriter) after the HTTP upgrade
    import asyncio
    import base64
    import os
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    context = None
    if parts.scheme == "wss":  # these tests are about the websocket, not about who holds the certificate
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    status = await reader.readuntil(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101"), status
    return reader, writer


async def test_bytes_dribbled_after_connecting_do_not_extend_the_handshake(tiny_model, tmp_path: Path) -> None:
    import asyncio
    import os

    coord = await start_coordinator(tiny_model, tmp_path, handshake_timeout_s=1.0)
    try:
        reader, writer = await open_raw_websocket(coord.ws_url)
        started = time.monotonic()
        writer.write(bytes([0x82, 0x80 | 120]) + os.urandom(4))  # a masked binary frame of 120 bytes: header only

        async def dribble() -> None:
            while True:
                writer.write(b"\x00")
                await writer.drain()
                await asyncio.sleep(0.1)

        dribbler = asyncio.create_task(dribble())
        try:
            opcode, payload = await asyncio.wait_for(read_ws_frame(reader), 10)
            while opcode != 0x8:  # skip the Error frame
                opcode, payload = await asyncio.wait_for(read_ws_frame(reader), 10)
        finally:
            dribbler.cancel()
            writer.close()
        elapsed = time.monotonic() - started
        assert int.from_bytes(payload[:2], "big") == 1008
        assert b"handshake not finished within 1 s" in payload[2:]
        assert elapsed < 8, f"closed only after {elapsed:.1f} s"
    finally:
        await coord.stop()


async def handshake_as_volunteer(ws, invite: str) -> Channel:  # noqa: ANN001 - aiohttp ClientWebSocketResponse
    """Join as a new volunteer by hand, the way the app does; returns the authenticated channel."""
    import os

    identity = Identity.generate()
    channel = Channel(ws, ProtocolConnection(Role.VOLUNTEER))
    nonce = os.urandom(32)
    profile = quick_profile(memory_bytes=2**30, name="flooder")
    await channel.send(Hello(
        protocol_version=PROTOCOL_VERSION, node_public_key=identity.public_key, name="flooder", os="test",
        app_version="0", profile=profile, invite=invite, client_nonce=nonce,
    ))
    challenge = await channel.recv(timeout=10)
    assert isinstance(challenge, Challenge), challenge
    pool_id = fingerprint(challenge.pool_public_key)
    signature = identity.sign(auth_transcript(role="node", pool_id=pool_id, node_public_key=identity.public_key, nonce=challenge.nonce))
    await channel.send(Auth(signature=signature))
    assert isinstance(await channel.recv(timeout=10), Accepted)
    return channel


async def test_a_flood_of_messages_closes_the_connection_not_the_coordinator(tiny_model, tmp_path: Path) -> None:
    coord = await start_coordinator(tiny_model, tmp_path, ws_max_messages_per_s=50.0, ws_burst_messages=100)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(coord.ws_url, proxy=None) as ws:
                channel = await handshake_as_volunteer(ws, coord.invite(ttl_s=60))
                for seq in range(1, 400):
                    if ws.closed:
                        break
                    try:
                        await channel.send(Heartbeat(seq=seq, sent_at=0.0))
                    except (ConnectionError, ChannelClosed):
                        break
                msg = await ws.receive(timeout=10)
                while msg.type == aiohttp.WSMsgType.BINARY:  # acks and probes sent before the cut
                    msg = await ws.receive(timeout=10)
                assert ws.close_code == 1008
                assert "message rate limit" in str(msg.extra) and "messages/s" in str(msg.extra)
            async with http.get(coord.url + "/healthz") as response:
                assert response.status == 200
    finally:
        await coord.stop()


async def test_unauthenticated_connections_from_one_address_are_capped(tiny_model, tmp_path: Path) -> None:
    import asyncio

    coord = await start_coordinator(tiny_model, tmp_path, ws_max_pending_handshakes_per_ip=2, handshake_timeout_s=30)
    try:
        async with aiohttp.ClientSession() as http:
            first = await http.ws_connect(coord.ws_url, proxy=None)
            second = await http.ws_connect(coord.ws_url, proxy=None)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(coord.ws_url, proxy=None)
            assert refused.value.status == 429
            await first.close()
            for _ in range(100):  # the coordinator notices the close and frees the place
                try:
                    third = await http.ws_connect(coord.ws_url, proxy=None)
                    break
                except aiohttp.WSServerHandshakeError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the place of a closed connection was never freed")
            await second.close()
            await third.close()
    finally:
        await coord.stop()


async def test_pings_count_against_the_message_rate(tiny_model, tmp_path: Path) -> None:
    coord = await start_coordinator(tiny_model, tmp_path, ws_max_messages_per_s=20.0, ws_burst_messages=40)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(coord.ws_url, proxy=None) as ws:
                for _ in range(100):
                    if ws.closed:
                        break
                    try:
                        await ws.ping()
                    except ConnectionError:
                        break
                msg = await ws.receive(timeout=10)
                while msg.type == aiohttp.WSMsgType.BINARY:
                    msg = await ws.receive(timeout=10)
                assert ws.close_code == 1008 and "message rate limit" in str(msg.extra)
    finally:
        await coord.stop()


async def test_a_connection_that_never_sends_a_request_is_closed(tiny_model, tmp_path: Path) -> None:
    import asyncio
    from urllib.parse import urlsplit

    coord = await start_coordinator(tiny_model, tmp_path, http_idle_timeout_s=0.5)
    try:
        url = urlsplit(coord.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half a request, then nothing
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server hung up
        assert time.monotonic() - started < 5
        writer.close()
    finally:
        await coord.stop()
