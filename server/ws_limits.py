"""Limits on the volunteer websocket (``/ws``): floods, and connections that never authenticate.

:class:`GuardedWebSocket` wraps the server's websocket so that every message the peer
sends (data, ping or pong) is counted against a per-connection
:class:`~server.ratelimit.ConnectionRateLimiter`; a peer that floods is closed with 1008
and a reason saying which limit it broke. It also answers pings itself, so pings count
too (the websocket must be created with ``autoping=False``).

:class:`WsLimits` holds one coordinator's settings and the per-address cap on
connections that have not finished the handshake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from core.errors import ProtocolViolation
from server.config import CoordinatorConfig
from server.ratelimit import ConcurrencyCap, ConnectionRateLimiter, Rate

FLOOD_CLOSE_CODE = 1008
PENDING_RETRY_AFTER_S = 5


class GuardedWebSocket:
    """A server websocket whose incoming messages are rate-limited; otherwise the same calls.

    ``receive`` raises :class:`ProtocolViolation` (after closing the socket with 1008)
    once the peer breaks the limiter's rates.
    """

    def __init__(
        self, ws: web.WebSocketResponse, limiter: ConnectionRateLimiter, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ws = ws
        self.limiter = limiter
        self._clock = clock

    @property
    def closed(self) -> bool:
        """Whether the websocket is closed."""
        return self.ws.closed

    @property
    def close_code(self) -> int | None:
        """The close code, once closed."""
        return self.ws.close_code

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message."""
        await self.ws.send_bytes(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> Any:
        """Close with ``code`` and ``message``."""
        return await self.ws.close(code=code, message=message)

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        """The next data or close message; pings are answered and, like pongs, only counted."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                size = len(msg.data) if isinstance(msg.data, (bytes, bytearray, str)) else 0
                problem = self.limiter.admit(size, self._clock())
                if problem is not None:
                    reason = f"message rate limit: {problem}"
                    await self.ws.close(code=FLOOD_CLOSE_CODE, message=reason.encode()[:120])
                    raise ProtocolViolation(f"closed a flooding connection: {reason}",
                                            hint="a Butterfly volunteer never sends this much; update or check it")
            if msg.type is aiohttp.WSMsgType.PING:
                await self.ws.pong(msg.data)
                continue
            if msg.type is aiohttp.WSMsgType.PONG:
                continue
            return msg


class WsLimits:
    """One coordinator's websocket limits: per-connection rates and the per-address handshake cap."""

    def __init__(self, config: CoordinatorConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.messages = Rate(per_s=config.ws_max_messages_per_s, burst=config.ws_burst_messages)
        self.data_bytes = Rate(per_s=config.ws_max_bytes_per_s, burst=config.ws_burst_bytes)
        self.pending = ConcurrencyCap(config.ws_max_pending_handshakes_per_ip)
        self._clock = clock

    def guard(self, ws: web.WebSocketResponse) -> GuardedWebSocket:
        """``ws`` with a fresh per-connection rate limiter."""
        limiter = ConnectionRateLimiter(messages=self.messages, data_bytes=self.data_bytes, now=self._clock())
        return GuardedWebSocket(ws, limiter, clock=self._clock)

    def too_many_pending(self, peer: str) -> web.Response:
        """The HTTP 429 for an address that already has its cap of unauthenticated connections."""
        return web.json_response(
            {
                "error": f"too many unauthenticated connections from {peer} (at most {self.pending.limit})",
                "hint": "finish the handshake on the open connections first",
            },
            status=429,
            headers={"Retry-After": str(PENDING_RETRY_AFTER_S)},
        )
