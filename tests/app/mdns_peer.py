"""Advertise or browse for one pool on one interface, for the network-namespace test (run as a script).

``advertise ADDRESS POOL_ID``: register the pool on ADDRESS, print ``registered`` once it
is announced, keep it up until stdin closes. ``browse ADDRESS POOL_ID TIMEOUT``: print one
JSON line saying whether (and how fast) that pool was found from ADDRESS.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from app.discovery import PoolBrowser, PoolEvent, PoolFound
from core.discovery import PoolAdvert
from core.types import PoolId
from server.advertise import PoolAdvertiser


async def advertise(address: str, pool_id: str) -> None:
    advert = PoolAdvert(pool_id=PoolId(pool_id), pool_name="Namespace pool", model="tiny", invite_required=False, volunteers=1)
    advertiser = PoolAdvertiser(describe=lambda: advert, port=8765, addresses=[address])
    await advertiser.start()
    await asyncio.wait_for(advertiser.registered.wait(), 20)
    print("registered", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await advertiser.stop()


async def browse(address: str, pool_id: str, timeout: float) -> None:
    found = asyncio.Event()
    result: dict[str, object] = {"found": False}
    started = time.perf_counter()

    def on_event(event: PoolEvent) -> None:
        if isinstance(event, PoolFound) and event.pool.pool_id == pool_id and not found.is_set():
            result.update(found=True, found_after_s=time.perf_counter() - started, ws_url=event.pool.ws_url)
            found.set()

    browser = PoolBrowser(on_event, interfaces=[address])
    await browser.start()
    try:
        await asyncio.wait_for(found.wait(), timeout)
    except TimeoutError:
        pass
    await browser.stop()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    mode, address, pool = sys.argv[1:4]
    if mode == "advertise":
        asyncio.run(advertise(address, pool))
    else:
        asyncio.run(browse(address, pool, float(sys.argv[4])))
