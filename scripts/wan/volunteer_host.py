"""A volunteer's host in the WAN benchmark: find the pool by mDNS, dial it through a delaying proxy.

Run inside a volunteer's network namespace. Browses the local network from ``--address``
for the pool ``--pool-id`` (real mDNS across the bridge), starts a
:class:`scripts.wan.delay_proxy.DelayProxy` on 127.0.0.1 towards the address and port the
advert gave, and runs ``butterfly volunteer`` against the proxy (the pool's key is pinned
with ``--pool-id``, so TLS is checked end to end through the proxy). The proxy delays both
directions, so this host's link gains ``2 × --delay-ms`` of round trip.

Direct links: the volunteer listens for other volunteers on ``--address`` port
``--peer-port`` and advertises port ``--peer-proxy-port`` over mDNS, where a second
delaying proxy with the same shape forwards to the listener; so a hidden state handed
from one volunteer to another crosses one delayed leg, as one sent to or from the
coordinator does. Prints JSON lines (``discovered``, ``exited``); SIGTERM makes the
volunteer drain and leave.

    python -m scripts.wan.volunteer_host --address 10.77.1.2 --pool-id bf1… --name v1 [--delay-ms 10 --loss 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.wan.delay_proxy import DelayProxy, LinkShape  # noqa: E402


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def discover(address: str, pool_id: str, timeout_s: float):  # noqa: ANN201 - app.discovery.DiscoveredPool
    """The pool ``pool_id`` as seen by mDNS from ``address``; raises TimeoutError if it is not found in time."""
    from app.discovery import PoolBrowser, PoolEvent, PoolFound, PoolUpdated

    found: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def on_event(event: PoolEvent) -> None:
        if isinstance(event, PoolFound | PoolUpdated) and event.pool.pool_id == pool_id and not found.done():
            found.set_result(event.pool)

    browser = PoolBrowser(on_event, interfaces=[address])
    await browser.start()
    try:
        return await asyncio.wait_for(found, timeout_s)
    finally:
        await browser.stop()


def through_proxy(ws_url: str, port: int) -> str:
    """``ws_url`` with its host and port replaced by the local proxy's."""
    scheme, rest = ws_url.split("://", 1)
    path = rest[rest.index("/"):] if "/" in rest else "/ws"
    return f"{scheme}://127.0.0.1:{port}{path}"


async def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    pool = await discover(args.address, args.pool_id, args.discover_timeout)
    emit("discovered", ws_url=pool.ws_url, after_s=time.perf_counter() - started)  # type: ignore[attr-defined]
    shape = LinkShape(one_way_s=args.delay_ms / 1000.0, loss=args.loss, rto_s=args.rto_ms / 1000.0)
    proxy = DelayProxy((pool.host, pool.port), shape, rng=random.Random(args.seed))  # type: ignore[attr-defined]
    await proxy.start()
    peer_proxy = DelayProxy((args.address, args.peer_port), shape, listen=(args.address, args.peer_proxy_port),
                            rng=random.Random(args.seed + 1_000_003))
    await peer_proxy.start()
    cmd = [sys.executable, "-m", "cli", "volunteer", "--url", through_proxy(pool.ws_url, proxy.port),  # type: ignore[attr-defined]
           "--pool-id", args.pool_id, "--name", args.name, "--data-dir", args.data_dir, "--threads", str(args.threads),
           "--peer-host", args.address, "--peer-port", str(args.peer_port), "--peer-advertise-port", str(peer_proxy.port)]
    if args.memory_bytes:
        cmd += ["--memory-gb", f"{args.memory_bytes / 2**30:.9f}"]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(ROOT))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: proc.returncode is None and proc.send_signal(signal.SIGTERM))
    try:
        code = await proc.wait()
    finally:
        await proxy.stop()
        await peer_proxy.stop()
    emit("exited", code=code, held_chunks=proxy.held_chunks, connections=proxy.connections,
         peer_held_chunks=peer_proxy.held_chunks, peer_connections=peer_proxy.connections)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="this host's IPv4 address (where mDNS is browsed)")
    parser.add_argument("--pool-id", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-bytes", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay added in each direction")
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--rto-ms", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-port", type=int, default=9101, help="where the volunteer listens for direct links")
    parser.add_argument("--peer-proxy-port", type=int, default=9100,
                        help="where the delaying proxy in front of that listener listens (the port advertised)")
    parser.add_argument("--discover-timeout", type=float, default=30.0)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
