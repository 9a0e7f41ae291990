"""The cluster map's routes: the page at ``/``, its static files, and the live view.

- ``GET /`` — the page (``assets/web/index.html``); ``GET /static/…`` — its script and styles.
- ``GET /api/cluster`` — the current :func:`~server.web.view.cluster_view` as JSON.
- ``GET /api/events`` — server-sent events: a fresh view every ``PUSH_INTERVAL_S`` and as
  soon as the pool's membership, plan, events or queue change.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from core.resources import asset_path
from server.web.view import structure_key

WEB_ASSETS = asset_path("web")
LOGO = asset_path("butterfly.svg")
PUSH_INTERVAL_S = 0.5
CHANGE_POLL_S = 0.1
NO_CACHE = {"Cache-Control": "no-cache"}


class ClusterMap:
    """Serves the map page and streams ``view()`` to it; ``closing`` ends every stream."""

    def __init__(self, view: Callable[[], dict[str, Any]]) -> None:
        self._view = view
        self.closing = asyncio.Event()

    def install(self, app: web.Application) -> None:
        """Add the page, static files and live-view routes to ``app``."""
        app.router.add_get("/", self.page)
        app.router.add_get("/favicon.svg", self.logo)
        app.router.add_get("/api/cluster", self.cluster)
        app.router.add_get("/api/events", self.events)
        app.router.add_static("/static/", WEB_ASSETS, follow_symlinks=False, append_version=False)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.closing.set()

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_ASSETS / "index.html", headers=NO_CACHE)

    async def logo(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(LOGO, headers={"Content-Type": "image/svg+xml", "Cache-Control": "max-age=86400"})

    async def cluster(self, request: web.Request) -> web.Response:
        return web.json_response(self._view(), headers=NO_CACHE)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Stream views as ``data: {json}`` events until the client or the coordinator goes away."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        last_key: tuple[Any, ...] | None = None
        last_sent = 0.0
        try:
            await response.write(b"retry: 1000\n\n")
            while not self.closing.is_set():
                view = self._view()
                key = structure_key(view)
                now = time.monotonic()
                if key != last_key or now - last_sent >= PUSH_INTERVAL_S:
                    payload = json.dumps(view, separators=(",", ":"), ensure_ascii=False)
                    await response.write(b"data: " + payload.encode("utf-8") + b"\n\n")
                    last_key, last_sent = key, now
                try:
                    await asyncio.wait_for(self.closing.wait(), CHANGE_POLL_S)
                except TimeoutError:
                    pass
        except (ConnectionError, RuntimeError):
            pass  # the page went away (aiohttp raises RuntimeError on a closed transport too)
        return response
