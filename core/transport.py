"""The thin asyncio layer around the sans-I/O protocol: one websocket, one ProtocolConnection.

Both sides use aiohttp websockets (the coordinator's server response and the volunteer's
client connection expose the same ``send_bytes``/``receive``/``close`` calls). This module
only moves bytes: every decision about what a message means lives in
:mod:`core.protocol.session` and in the coordinator or volunteer logic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp

from core.errors import ButterflyError, FrameTooLarge, ProtocolViolation
from core.protocol.messages import Bye, Message
from core.protocol.session import ProtocolConnection, State

log = logging.getLogger(__name__)


class _WebSocket(Protocol):
    closed: bool

    async def send_bytes(self, data: bytes) -> None: ...
    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...
    async def close(self, *, code: int = ..., message: bytes = ...) -> Any: ...


class ChannelClosed(ButterflyError):
    """The peer closed the connection (or it broke); ``code`` is the websocket close code."""

    def __init__(self, message: str, *, code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class Channel:
    """A websocket speaking the Butterfly protocol.

    ``send`` checks the message against the state machine before any byte leaves;
    ``recv`` returns the next validated message, or raises :class:`ChannelClosed` when
    the peer goes away and :class:`ProtocolViolation` when it sends something invalid
    (after telling the peer why and closing the socket).
    """

    def __init__(self, ws: _WebSocket, conn: ProtocolConnection) -> None:
        self.ws = ws
        self.conn = conn
        self._inbox: list[Message] = []
        self._send_lock = asyncio.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_sent = 0
        self.frames_received = 0

    @property
    def state(self) -> State:
        return self.conn.state

    async def send(self, msg: Message) -> None:
        async with self._send_lock:
            self.conn.send(msg)
            for data in self.conn.data_to_send():
                self.bytes_sent += len(data)
                self.frames_sent += 1
                await self.ws.send_bytes(data)

    async def recv(self, timeout: float | None = None) -> Message:
        while not self._inbox:
            raw = await self.ws.receive(timeout=timeout)
            if raw.type == aiohttp.WSMsgType.BINARY:
                self.bytes_received += len(raw.data)
                self.frames_received += 1
                try:
                    self.conn.receive(raw.data)
                except ProtocolViolation as exc:
                    await self._flush_and_close(exc.close_code, str(exc))
                    raise
                self._inbox.extend(self.conn.events())
            elif raw.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                code = getattr(self.ws, "close_code", None)
                reason = raw.extra if isinstance(raw.extra, str) else ""
                raise ChannelClosed(f"connection closed by peer ({code}{': ' + reason if reason else ''})", code=code)
            elif raw.type == aiohttp.WSMsgType.ERROR:
                if isinstance(raw.data, aiohttp.WebSocketError) and raw.data.code == 1009:
                    exc = FrameTooLarge(f"refused a websocket message: {raw.data}", hint="the peer sent a frame beyond the limit")
                    await self.close(1009, "message too big")
                    raise exc
                raise ChannelClosed(f"connection broke: {raw.data!r}")
            else:
                exc = ProtocolViolation("text websocket messages are not part of the protocol")
                await self._flush_and_close(exc.close_code, str(exc))
                raise exc
        return self._inbox.pop(0)

    async def fail(self, exc: ButterflyError) -> None:
        """Tell the peer what went wrong (an Error message) and close with the error's code."""
        async with self._send_lock:
            self.conn.fail(exc)
            await self._flush_and_close(self.conn.close_code or exc.close_code, exc.message)

    async def bye(self, reason: str) -> None:
        """Say goodbye politely and close normally."""
        try:
            await self.send(Bye(reason=reason[:200]))
        except Exception:  # noqa: BLE001
            pass
        await self.close(1000, reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.ws.closed:
            try:
                await self.ws.close(code=code, message=reason.encode()[:120])
            except Exception:  # noqa: BLE001 - already broken
                pass

    async def _flush_and_close(self, code: int | None, reason: str) -> None:
        try:
            for data in self.conn.data_to_send():
                await self.ws.send_bytes(data)
        except Exception:  # noqa: BLE001
            pass
        await self.close(code or 1008, reason)
