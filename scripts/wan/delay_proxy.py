"""A TCP proxy that delays the byte stream: the latency and loss part of a wide-area link.

Every chunk read from one side is written to the other side a fixed one-way delay later,
in order, so the byte stream is unchanged and only its timing is. Bandwidth is left to
the kernel (``tbf`` on the interfaces); this module adds what ``tc netem`` would, where
``netem`` is not available.

Loss. A proxy cannot drop bytes inside a TCP stream, so the *effect* of a lost segment
on TCP is emulated instead: the chunk it belongs to (and, to keep order, everything
behind it) is held back by the time TCP would need to recover it. Each chunk counts as
``ceil(bytes / mss)`` segments, each lost with probability ``loss``. A lost segment with
at least :data:`DUPACK_THRESHOLD` segments after it in the same chunk is recovered by
fast retransmit, one round trip later; a lost segment near the tail of a burst (small
messages are all tail) waits for the retransmission timeout, ``rto_s`` (Linux's
minimum is 200 ms). The schedule is pure (:func:`chunk_penalty_s`,
:func:`release_at`) and takes its random generator as a parameter.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MSS = 1448
"""Payload bytes of one TCP segment on a 1500-byte MTU link with timestamps."""
DUPACK_THRESHOLD = 3
"""Segments that must follow a lost one for fast retransmit (three duplicate ACKs)."""
READ_BYTES = 64 * 1024
"""Largest chunk read from a socket at once."""


@dataclass(frozen=True, slots=True)
class LinkShape:
    """What the proxy adds to each direction of a connection.

    ``one_way_s`` is the delay of every chunk (half the round trip it adds);
    ``loss`` the probability that a segment is lost; ``rto_s`` the retransmission
    timeout a tail loss costs. A zero shape forwards at once.
    """

    one_way_s: float = 0.0
    loss: float = 0.0
    rto_s: float = 0.2
    mss: int = MSS

    def __post_init__(self) -> None:
        if self.one_way_s < 0 or self.rto_s < 0 or not 0.0 <= self.loss < 1.0 or self.mss < 1:
            raise ValueError(f"invalid link shape {self}")

    @property
    def rtt_s(self) -> float:
        """The round trip this shape adds to a connection whose both directions it delays."""
        return 2.0 * self.one_way_s


def segments(nbytes: int, mss: int = MSS) -> int:
    """TCP segments a chunk of ``nbytes`` occupies."""
    return max(1, math.ceil(nbytes / mss))


def chunk_penalty_s(nbytes: int, shape: LinkShape, rng: random.Random) -> float:
    """Extra hold of one chunk for the segments of it that TCP would have lost (0 when none)."""
    if shape.loss <= 0.0:
        return 0.0
    count = segments(nbytes, shape.mss)
    penalty = 0.0
    for index in range(count):
        if rng.random() < shape.loss:
            after = count - index - 1
            penalty = max(penalty, shape.rtt_s if after >= DUPACK_THRESHOLD else shape.rto_s)
    return penalty


def release_at(arrived: float, shape: LinkShape, penalty_s: float, previous: float) -> float:
    """When a chunk read at ``arrived`` may be written: after its delay and penalty, never before the previous one."""
    return max(previous, arrived + shape.one_way_s + penalty_s)


class _Pump:
    """One direction of one connection: read chunks, schedule them, write them when due."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shape: LinkShape,
                 rng: random.Random, clock: Callable[[], float]) -> None:
        self.reader = reader
        self.writer = writer
        self.shape = shape
        self.rng = rng
        self.clock = clock
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.bytes = 0
        self.held = 0

    async def read(self) -> None:
        last = 0.0
        try:
            while True:
                data = await self.reader.read(READ_BYTES)
                now = self.clock()
                if not data:
                    break
                penalty = chunk_penalty_s(len(data), self.shape, self.rng)
                self.held += penalty > 0
                last = release_at(now, self.shape, penalty, last)
                self.queue.put_nowait((last, data))
        except (ConnectionError, OSError):
            pass
        finally:
            self.queue.put_nowait((max(last, self.clock() + self.shape.one_way_s), b""))

    async def write(self) -> None:
        try:
            while True:
                due, data = await self.queue.get()
                wait = due - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.writer.write(data)
                self.bytes += len(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass


class DelayProxy:
    """Listens on ``listen``; every connection is forwarded to ``upstream`` through two delaying pumps."""

    def __init__(self, upstream: tuple[str, int], shape: LinkShape, *, listen: tuple[str, int] = ("127.0.0.1", 0),
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.shape = shape
        self.listen = listen
        self.rng = rng or random.Random()
        self.clock = clock
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.held_chunks = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port it listens on (after :meth:`start`)."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind the listening socket; connections are served in the background."""
        self.server = await asyncio.start_server(self._serve, *self.listen)

    async def stop(self) -> None:
        """Stop listening and cut every forwarded connection."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("cannot reach %s:%d: %s", *self.upstream, exc)
            client_writer.close()
            self._tasks.discard(task)
            return
        pumps = [_Pump(client_reader, up_writer, self.shape, self.rng, self.clock),
                 _Pump(up_reader, client_writer, self.shape, self.rng, self.clock)]
        try:
            await asyncio.gather(*(p.read() for p in pumps), *(p.write() for p in pumps))
        except asyncio.CancelledError:
            pass  # stop() cuts the connection
        finally:
            self.held_chunks += sum(p.held for p in pumps)
            for writer in (client_writer, up_writer):
                writer.close()
            self._tasks.discard(task)


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    shape = LinkShape(one_way_s=args.delay_ms / 1000.0, loss=args.loss, rto_s=args.rto_ms / 1000.0)
    proxy = DelayProxy((host, int(port)), shape, listen=(args.listen_host, args.listen_port), rng=random.Random(args.seed))
    await proxy.start()
    print(f"forwarding {args.listen_host}:{proxy.port} -> {args.upstream} with {shape}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Forward TCP with a fixed one-way delay (and emulated loss).")
    parser.add_argument("upstream", help="HOST:PORT to forward to")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay per direction")
    parser.add_argument("--loss", type=float, default=0.0, help="segment loss probability (emulated as TCP recovery time)")
    parser.add_argument("--rto-ms", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=None)
    asyncio.run(_main(parser.parse_args()))
