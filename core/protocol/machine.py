"""What every conversation of the protocol shares, sans I/O: frames in, messages out, and back.

:class:`FrameMachine` is the face the websocket loops see — :meth:`~FrameMachine.receive`
bytes, take :meth:`~FrameMachine.events`, :meth:`~FrameMachine.send` messages, put
:meth:`~FrameMachine.data_to_send` on the wire, :meth:`~FrameMachine.fail` to refuse — and
the closing rules: any violation closes the conversation with an Error for the peer, and
anything received after it closed is discarded, as websockets do. Which message is legal
when is each conversation's own business (:meth:`FrameMachine._apply`): the coordinator's
with a volunteer (:mod:`core.protocol.session`) and a direct link between two volunteers
(:mod:`core.protocol.peer`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from core.errors import ButterflyError, ProtocolViolation
from core.protocol.frames import Limits
from core.protocol.messages import Error, Message, decode_message

MAX_CLOSE_REASON_BYTES: int = 123
"""RFC 6455 limits a close frame's reason to 123 bytes of UTF-8."""

CLOSE_NORMAL: int = 1000


class FrameMachine:
    """One end of a conversation: ``role`` (with a ``peer`` property), ``state`` and, once it
    is over, ``close_code``/``close_reason`` (the websocket close code and reason to use).

    Subclasses set :attr:`CLOSED` (their closed state) and :attr:`NOUN` (how errors name the
    conversation) and implement :meth:`_apply`.
    """

    CLOSED: ClassVar[Enum]
    NOUN: ClassVar[str] = "connection"

    def __init__(self, role: Any, initial: Enum, *, limits: Limits = Limits()) -> None:
        self.role = role
        self.limits = limits
        self.state = initial
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._events: list[Message] = []
        self._outgoing: list[bytes] = []

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Take one received frame; its message becomes available from :meth:`events`.

        On any violation (bad bytes, a message illegal here, in this state or from this
        side) the conversation closes: ``state`` becomes closed, ``close_code`` and
        ``close_reason`` are set, an Error for the peer is queued, and the
        :class:`ProtocolViolation` is raised. After it closed, received data is discarded.
        """
        if self.state is self.CLOSED:
            return
        try:
            msg = decode_message(data, self.limits)
            self._apply(msg, sender=self.role.peer)
        except ProtocolViolation as exc:
            self.fail(exc)
            raise
        self._events.append(msg)

    def events(self) -> list[Message]:
        """The messages received since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for the peer; raise :class:`ProtocolViolation` (state unchanged) if illegal now.

        Sending Bye, or an Error without ``step_id``, closes the conversation after it.
        """
        if self.state is self.CLOSED:
            raise ProtocolViolation(f"cannot send {msg.KIND}: the {self.NOUN} is closed ({self.close_reason})")
        data = msg.to_frame()
        self._apply(msg, sender=self.role)
        self._outgoing.append(data)

    def data_to_send(self) -> list[bytes]:
        """The frames queued since the last call, each to go out as one binary websocket message."""
        data, self._outgoing = self._outgoing, []
        return data

    def fail(self, exc: ButterflyError) -> None:
        """End the conversation because of ``exc``: queue an Error telling the peer why, and close.

        Does nothing if it is already closed.
        """
        if self.state is self.CLOSED:
            return
        try:
            self._outgoing.append(Error.from_exception(exc).to_frame())
        except ProtocolViolation:  # an error text we cannot encode: send its class only
            self._outgoing.append(Error(type(exc).__name__[:64], "").to_frame())
        self._close(exc.close_code, exc.message)

    def _apply(self, msg: Message, *, sender: Any) -> None:
        """Check ``msg`` from ``sender`` against the state; update the state if legal, else raise."""
        raise NotImplementedError

    def _close(self, code: int, reason: str) -> None:
        self.state = self.CLOSED
        self.close_code = code
        self.close_reason = truncate_utf8(reason, MAX_CLOSE_REASON_BYTES)


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (ending in "..." when cut)."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    return raw[: limit - 3].decode("utf-8", errors="ignore") + "..."


__all__ = ["CLOSE_NORMAL", "MAX_CLOSE_REASON_BYTES", "FrameMachine", "truncate_utf8"]
