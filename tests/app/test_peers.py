"""Direct links between volunteers with real parts: mDNS on loopback, TLS websockets, Ed25519 proofs."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import torch
from aiohttp import web
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from app.peers import (
    SERVICE_TYPE,
    PeerAddress,
    PeerNetwork,
    check_listener_key,
    node_txt,
    peer_address,
    retry_delay,
)
from core.errors import AuthFailed, ConfigError, ProtocolViolation
from core.identity import Identity, peer_transcript
from core.protocol.messages import Error, Handoff, Message, PeerAuth, PeerChallenge, decode_message
from core.tls import client_context, server_context

HOST = "127.0.0.1"
POOL = Identity.generate().fingerprint
Received = list[tuple[str, Handoff]]
Start = Callable[..., Awaitable[tuple[PeerNetwork, Received]]]


def handoff(step_id: int = 7) -> Handoff:
    return Handoff(step_id=step_id, session_id="s1", start_pos=3, x=torch.randn(1, 2, 576))


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start PeerNetworks on loopback (each with its own identity unless given); all are stopped after."""
    started: list[PeerNetwork] = []

    async def start_one(identity: Identity | None = None, *, on_handoff: Callable[[str, Handoff], None] | None = None,
                        **options: object) -> tuple[PeerNetwork, Received]:
        received: Received = []
        identity = identity or Identity.generate()
        network = PeerNetwork(identity, pool_id=POOL, host=HOST, cert_dir=tmp_path / identity.fingerprint,
                              on_handoff=on_handoff or (lambda node, msg: received.append((node, msg))),
                              **options)  # type: ignore[arg-type]
        await network.start()
        started.append(network)
        return network, received

    yield start_one
    await asyncio.gather(*(network.stop() for network in started))


async def wait_advertised(*networks: PeerNetwork) -> None:
    await asyncio.wait_for(asyncio.gather(*(n.advertised.wait() for n in networks)), 10)


async def raw_client(network: PeerNetwork) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """A websocket to ``network``'s listener that is not a PeerNetwork: the test speaks for it."""
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(f"wss://{HOST}:{network.port}/peer", ssl=client_context(), autoping=True)
    return http, ws


async def read_message(ws: aiohttp.ClientWebSocketResponse) -> Message | None:
    raw = await ws.receive(timeout=5)
    return decode_message(raw.data) if raw.type is aiohttp.WSMsgType.BINARY else None


async def read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[Message]:
    seen = []
    while (msg := await read_message(ws)) is not None:
        seen.append(msg)
    return seen


# --- pure parts --------------------------------------------------------------------------


def test_retry_delays_double_from_one_second_up_to_a_minute() -> None:
    assert [retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000) == 60
    with pytest.raises(ValueError):
        retry_delay(0)


def test_a_node_record_reads_back_to_its_address() -> None:
    node = Identity.generate().fingerprint
    txt = {k.encode(): v.encode() for k, v in node_txt(node, POOL).items()}
    address = peer_address(node, pool_id=POOL, properties=txt, addresses=["fe80::1", "10.0.0.7", "127.0.0.1"], port=4242)
    assert address == PeerAddress(node_id=node, host="10.0.0.7", port=4242, path="/peer")
    assert address.url == "wss://10.0.0.7:4242/peer"
    assert PeerAddress(node, "fd00::2", 1, "/peer").url == "wss://[fd00::2]:1/peer"


@pytest.mark.parametrize(
    ("change", "addresses", "port", "match"),
    [
        ({"node": "bf1someoneelse"}, ["10.0.0.7"], 1, "names node"),
        ({"pool": "bf1otherpool"}, ["10.0.0.7"], 1, "belongs to pool"),
        ({"v": "2"}, ["10.0.0.7"], 1, "layout version"),
        ({"path": "peer?x=1"}, ["10.0.0.7"], 1, "not a websocket path"),
        ({}, ["not an address"], 1, "no usable address"),
        ({}, ["10.0.0.7"], 0, "port"),
        ({}, ["10.0.0.7"], None, "port"),
    ],
)
def test_a_record_for_another_node_or_pool_is_refused(change: dict, addresses: list, port: int | None, match: str) -> None:
    node = Identity.generate().fingerprint
    txt = {**node_txt(node, POOL), **change}
    with pytest.raises(ProtocolViolation, match=match):
        peer_address(node, pool_id=POOL, properties=txt, addresses=addresses, port=port)
    with pytest.raises(ProtocolViolation, match="not UTF-8"):
        peer_address(node, pool_id=POOL, properties={b"node": b"\xff"}, addresses=["10.0.0.7"], port=1)


def test_the_constructor_refuses_addresses_that_cannot_be_advertised(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "my-laptop.local"):
        with pytest.raises(ConfigError):
            PeerNetwork(Identity.generate(), pool_id=POOL, host=host, cert_dir=tmp_path, on_handoff=lambda n, m: None)


# --- links between real PeerNetworks ---------------------------------------------------------


async def test_a_handoff_arrives_over_a_link_found_over_mdns(start: Start) -> None:
    (a, _), (b, got_b), (c, got_c) = await asyncio.gather(start(), start(), start())
    await wait_advertised(a, b, c)
    assert not a.link_up(b.node_id)
    assert await a.send(b.node_id, handoff()) is False  # no link yet: starts finding one
    await eventually(lambda: a.link_up(b.node_id))
    first, second = handoff(7), handoff(8)
    assert await a.send(b.node_id, first) and await a.send(b.node_id, second)
    b.want(c.node_id)
    await eventually(lambda: b.link_up(c.node_id))
    assert await b.send(c.node_id, handoff(9))
    await eventually(lambda: len(got_b) == 2 and len(got_c) == 1)
    assert [(node, msg.step_id) for node, msg in got_b] == [(a.node_id, 7), (a.node_id, 8)]
    assert torch.equal(got_b[0][1].x, first.x) and got_b[0][1].session_id == "s1" and got_b[0][1].start_pos == 3
    assert got_c[0][0] == b.node_id
    assert a.links() == [b.node_id] and b.links() == sorted([a.node_id, c.node_id]) and c.links() == [b.node_id]
    assert (a.handoffs_sent, b.handoffs_received, b.handoffs_sent, c.handoffs_received) == (2, 2, 1, 1)
    assert a.bytes_sent > 2 * first.x.nbytes
    assert not c.link_up(b.node_id)  # links are one-way: c never dialed b


async def test_a_consumer_that_raises_does_not_break_the_link(start: Start) -> None:
    calls = 0

    def explode(node: str, msg: Handoff) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("consumer bug")

    (a, _), (b, _) = await asyncio.gather(start(), start(on_handoff=explode))
    await wait_advertised(b)
    a.want(b.node_id)
    await eventually(lambda: a.link_up(b.node_id))
    assert await a.send(b.node_id, handoff()) and await a.send(b.node_id, handoff(8))
    await eventually(lambda: calls == 2)
    assert a.link_up(b.node_id) and b.links() == [a.node_id]


async def test_a_node_that_is_not_there_is_not_retried_at_every_step(start: Start) -> None:
    (a, _) = await start()
    missing = Identity.generate().fingerprint
    assert await a.send(missing, handoff()) is False
    await eventually(lambda: missing not in a._dialing, timeout=6)  # the 3 s mDNS query timed out
    assert await a.send(missing, handoff()) is False
    assert missing not in a._dialing and a._retry_at[missing] > asyncio.get_running_loop().time() + 0.5


@pytest.mark.parametrize("fake", ["certificate of another node", "challenge names another key"])
async def test_a_dialer_refuses_a_listener_that_is_not_the_node_it_wants(start: Start, tmp_path: Path, fake: str) -> None:
    (a, _) = await start()
    wanted, other = Identity.generate(), Identity.generate()
    tls_identity, challenge_key = (other, other.public_key) if fake.startswith("certificate") else (wanted, other.public_key)
    received: list[Message] = []
    closed = asyncio.Event()

    async def fake_listener(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(PeerChallenge(node_public_key=challenge_key, nonce=b"\x01" * 32).to_frame())
        async for raw in ws:
            if raw.type is aiohttp.WSMsgType.BINARY:
                received.append(decode_message(raw.data))
        closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/peer", fake_listener)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    context = server_context(tls_identity, cert_file=tmp_path / "fake.pem", pool_name="fake", hosts=[HOST])
    await web.TCPSite(runner, HOST, 0, ssl_context=context).start()
    port = runner.addresses[0][1]
    # Someone on the LAN answers for the wanted node with this listener's address.
    zc = AsyncZeroconf(interfaces=[HOST])
    record = AsyncServiceInfo(SERVICE_TYPE, f"{wanted.fingerprint}.{SERVICE_TYPE}", addresses=[bytes([127, 0, 0, 1])],
                              port=port, properties=node_txt(wanted.fingerprint, POOL), server="fake.local.")
    try:
        await zc.async_register_service(record)
        a.want(wanted.fingerprint)
        await asyncio.wait_for(closed.wait(), 8)
        await eventually(lambda: wanted.fingerprint not in a._dialing)
        assert not a.link_up(wanted.fingerprint) and a.links() == []
        assert not any(isinstance(m, PeerAuth) for m in received)
        if fake.startswith("certificate"):
            assert received == []  # refused before a single message was sent
        else:
            assert [type(m) for m in received] == [Error] and "names key" in received[0].message  # type: ignore[attr-defined]
    finally:
        await zc.async_unregister_service(record)
        await zc.async_close()
        await runner.cleanup()


async def test_the_pin_check_compares_the_certificate_key_with_the_node_id(start: Start) -> None:
    (b, _) = await start(advertise=False)
    http, ws = await raw_client(b)
    try:
        ssl_object = ws.get_extra_info("ssl_object")
        check_listener_key(ssl_object, b.node_id)
        with pytest.raises(AuthFailed, match="presents key"):
            check_listener_key(ssl_object, Identity.generate().fingerprint)
        with pytest.raises(AuthFailed, match="not encrypted"):
            check_listener_key(None, b.node_id)
    finally:
        await ws.close()
        await http.close()


@pytest.mark.parametrize("forgery", ["wrong signature", "signed for another pool", "signed for another listener"])
async def test_the_listener_refuses_a_dialer_without_a_valid_proof(start: Start, forgery: str) -> None:
    listener_identity = Identity.generate()
    (b, got) = await start(listener_identity, advertise=False)
    dialer = Identity.generate()
    http, ws = await raw_client(b)
    try:
        challenge = await read_message(ws)
        assert isinstance(challenge, PeerChallenge) and challenge.node_public_key == listener_identity.public_key
        pool_id = "bf1anotherpool" if forgery == "signed for another pool" else POOL
        listener = Identity.generate().fingerprint if forgery == "signed for another listener" else b.node_id
        transcript = peer_transcript(pool_id=pool_id, listener_id=listener, dialer_public_key=dialer.public_key,
                                     nonce=challenge.nonce)
        signature = secrets.token_bytes(64) if forgery == "wrong signature" else dialer.sign(transcript)
        await ws.send_bytes(PeerAuth(node_public_key=dialer.public_key, signature=signature).to_frame())
        await ws.send_bytes(handoff().to_frame())
        seen = await read_until_closed(ws)
        assert [type(m) for m in seen] == [Error] and seen[0].code == "AuthFailed"  # type: ignore[attr-defined]
        assert ws.close_code == 4003
        assert got == [] and b.links() == [] and b.handoffs_received == 0
    finally:
        await http.close()


async def test_a_valid_proof_from_a_plain_client_is_accepted(start: Start) -> None:
    """The same raw client, signing correctly: the refusals above are about the proof alone."""
    (b, got) = await start(advertise=False)
    dialer = Identity.generate()
    http, ws = await raw_client(b)
    try:
        challenge = await read_message(ws)
        assert isinstance(challenge, PeerChallenge)
        transcript = peer_transcript(pool_id=POOL, listener_id=b.node_id, dialer_public_key=dialer.public_key,
                                     nonce=challenge.nonce)
        await ws.send_bytes(PeerAuth(node_public_key=dialer.public_key, signature=dialer.sign(transcript)).to_frame())
        await ws.send_bytes(handoff().to_frame())
        await eventually(lambda: len(got) == 1)
        assert got[0][0] == dialer.fingerprint and b.links() == [dialer.fingerprint]
    finally:
        await ws.close()
        await http.close()
    await eventually(lambda: b.links() == [])


@pytest.mark.parametrize("garbage", [b"garbage", "text", handoff().to_frame(), PeerChallenge(
    node_public_key=b"\x01" * 32, nonce=b"\x02" * 32).to_frame()], ids=["bytes", "text", "handoff first", "wrong direction"])
async def test_a_client_that_does_not_speak_the_protocol_is_closed(start: Start, garbage: bytes | str) -> None:
    (b, got) = await start(advertise=False)
    http, ws = await raw_client(b)
    try:
        assert isinstance(await read_message(ws), PeerChallenge)
        if isinstance(garbage, str):
            await ws.send_str(garbage)
        else:
            await ws.send_bytes(garbage)
        seen = await read_until_closed(ws)
        assert [type(m) for m in seen] == [Error] and seen[0].code == "ProtocolViolation"  # type: ignore[attr-defined]
        assert ws.close_code == 1008 and got == [] and b.links() == []
    finally:
        await http.close()
    async with aiohttp.ClientSession() as plain:  # not a websocket at all
        async with plain.get(f"https://{HOST}:{b.port}/peer", ssl=client_context()) as response:
            assert response.status == 400


async def test_a_silent_client_is_closed_after_the_handshake_timeout_and_extra_ones_are_refused(start: Start) -> None:
    (b, _) = await start(advertise=False, handshake_timeout_s=0.5, max_inbound=1)
    http, ws = await raw_client(b)
    try:
        assert isinstance(await read_message(ws), PeerChallenge)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # the one inbound slot is taken
            await http.ws_connect(f"wss://{HOST}:{b.port}/peer", ssl=client_context())
        assert refused.value.status == 503
        started = time.monotonic()
        seen = await read_until_closed(ws)
        assert time.monotonic() - started < 4
        assert [type(m) for m in seen] == [Error] and "no proof of identity" in seen[0].message  # type: ignore[attr-defined]
        assert ws.close_code == 4003
        await eventually(lambda: b._inbound_count == 0)
        again = await http.ws_connect(f"wss://{HOST}:{b.port}/peer", ssl=client_context())  # the slot is free again
        assert isinstance(await read_message(again), PeerChallenge)
        await again.close()
    finally:
        await http.close()


async def test_stopping_a_node_takes_its_links_down_on_the_other_side(start: Start) -> None:
    (a, _), (b, _), (c, _) = await asyncio.gather(start(), start(), start())
    await wait_advertised(b, c)
    a.want(b.node_id)
    c.want(b.node_id)
    await eventually(lambda: a.link_up(b.node_id) and c.link_up(b.node_id))
    assert b.links() == sorted([a.node_id, c.node_id])
    started = time.monotonic()
    await c.stop()  # the dialer leaves: the listener drops it
    await eventually(lambda: b.links() == [a.node_id], timeout=3)
    await b.stop()  # the listener leaves: the dialer drops it
    await eventually(lambda: not a.link_up(b.node_id), timeout=3)
    assert time.monotonic() - started < 8
    assert await a.send(b.node_id, handoff()) is False
    await b.stop()  # idempotent
    b.want(a.node_id)  # after stop: nothing starts
    assert b._dialing == {}
