"""The delaying proxy: the byte stream is unchanged, nothing arrives before its delay, loss is priced like TCP."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from scripts.wan.delay_proxy import MSS, DelayProxy, LinkShape, chunk_penalty_s, release_at, segments


class Draws(random.Random):
    """A generator that returns preset draws in order (then 1.0: no more losses)."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0) if self.draws else 1.0


def test_segments_round_up() -> None:
    assert segments(1) == 1 and segments(MSS) == 1 and segments(MSS + 1) == 2 and segments(0) == 1


def test_no_loss_means_no_penalty() -> None:
    assert chunk_penalty_s(10 * MSS, LinkShape(one_way_s=0.01), Draws([0.0] * 10)) == 0.0


def test_a_tail_loss_waits_for_the_rto_and_an_early_loss_costs_one_round_trip() -> None:
    shape = LinkShape(one_way_s=0.01, loss=0.01, rto_s=0.2)
    # 10 segments; the first is lost: 9 follow it, so fast retransmit recovers it in one RTT.
    assert chunk_penalty_s(10 * MSS, shape, Draws([0.0])) == pytest.approx(0.02)
    # the 9th of 10 is lost: only one segment follows, no three duplicate ACKs: the RTO.
    assert chunk_penalty_s(10 * MSS, shape, Draws([0.5] * 8 + [0.0])) == pytest.approx(0.2)
    # a small message is all tail
    assert chunk_penalty_s(100, shape, Draws([0.0])) == pytest.approx(0.2)


def test_loss_rate_matches_the_setting_on_average() -> None:
    shape = LinkShape(one_way_s=0.01, loss=0.01, rto_s=0.2)
    rng = random.Random(5)
    held = sum(chunk_penalty_s(100, shape, rng) > 0 for _ in range(20_000))
    assert 150 < held < 250  # 1 % of 20,000 single-segment chunks


def test_release_keeps_order_behind_a_held_chunk() -> None:
    shape = LinkShape(one_way_s=0.01)
    first = release_at(0.0, shape, 0.2, 0.0)
    second = release_at(0.001, shape, 0.0, first)
    assert first == pytest.approx(0.21) and second == first
    assert release_at(1.0, shape, 0.0, first) == pytest.approx(1.01)


def test_invalid_shapes_are_refused() -> None:
    for bad in (dict(one_way_s=-1.0), dict(loss=1.0), dict(rto_s=-0.1), dict(mss=0)):
        with pytest.raises(ValueError):
            LinkShape(**bad)  # type: ignore[arg-type]


async def _echo_server() -> asyncio.base_events.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


@pytest.mark.timeout(30)
async def test_the_proxy_forwards_every_byte_in_order_and_never_early() -> None:
    server = await _echo_server()
    port = server.sockets[0].getsockname()[1]
    shape = LinkShape(one_way_s=0.02, loss=0.05, rto_s=0.05)
    proxy = DelayProxy(("127.0.0.1", port), shape, rng=random.Random(1))
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(b"x")
        await writer.drain()
        assert await reader.readexactly(1) == b"x"
        assert time.monotonic() - started >= shape.rtt_s  # delayed on the way out and on the way back

        payload = os.urandom(3 * 2**20)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        echoed = await reader.read()
        assert echoed == payload
        writer.close()
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()
    assert proxy.connections == 1
    assert proxy.held_chunks > 0  # 5 % loss over megabytes of segments
