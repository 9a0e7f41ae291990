"""The direct link between two volunteers, sans I/O: bytes in, messages out, and back.

A volunteer that computed a stage hands its output straight to the volunteer of the next
stage over a direct link (:mod:`app.peers` moves the bytes). The *dialer* is the sender of
hidden states, the *listener* their receiver. The conversation is short::

    listener -> dialer    PeerChallenge  (the listener's key and a fresh nonce)
    dialer   -> listener  PeerAuth       (the dialer's key and its signature over the nonce)
    dialer   -> listener  Handoff ...    (any number, once open)

Bye, and an Error without ``step_id``, end the link from either side at any point.
Every message of the coordinator conversation (:mod:`core.protocol.session`) is illegal
here, as is an Error naming a step. Whether the signature is valid is not this machine's
business: the I/O layer checks it with :func:`core.identity.peer_transcript` and calls
:meth:`PeerConnection.fail` to refuse. Anything received after the link closed is
discarded, as websockets do.
"""

from __future__ import annotations

from enum import Enum

from core.errors import ProtocolViolation
from core.protocol.frames import Limits
from core.protocol.machine import CLOSE_NORMAL, FrameMachine
from core.protocol.messages import Bye, Error, Handoff, Message, PeerAuth, PeerChallenge


class PeerRole(Enum):
    """Which end of a direct link this machine is."""

    LISTENER = "listener"
    DIALER = "dialer"

    @property
    def peer(self) -> PeerRole:
        """The role at the other end."""
        return PeerRole.DIALER if self is PeerRole.LISTENER else PeerRole.LISTENER


class PeerState(Enum):
    """Where the link stands; both ends move through the same states.

    The handshake states name the message that is due next: the listener's challenge,
    then the dialer's auth. ``OPEN``: hand-offs may flow from the dialer.
    """

    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_AUTH = "await_auth"
    OPEN = "open"
    CLOSED = "closed"


_L, _D = PeerRole.LISTENER, PeerRole.DIALER

_SENDER: dict[type[Message], PeerRole | None] = {
    PeerChallenge: _L, PeerAuth: _D, Handoff: _D, Bye: None, Error: None,
}
"""Who may send each message on a direct link (None: either side); no other kind is legal."""

_ORDER: dict[type[Message], tuple[PeerState, PeerState]] = {
    PeerChallenge: (PeerState.AWAIT_CHALLENGE, PeerState.AWAIT_AUTH),
    PeerAuth: (PeerState.AWAIT_AUTH, PeerState.OPEN),
    Handoff: (PeerState.OPEN, PeerState.OPEN),
}
"""The state each message is legal in and the state it leads to."""


class PeerConnection(FrameMachine):
    """One end of a direct link between volunteers, as a pure state machine.

    ``state`` is where the link stands; ``close_code``/``close_reason`` are set once it
    is over (the websocket close code and reason to use). ``challenge`` and ``auth``
    keep the handshake messages seen or sent, for the signature check.
    """

    CLOSED = PeerState.CLOSED
    NOUN = "direct link"

    def __init__(self, role: PeerRole, *, limits: Limits = Limits()) -> None:
        super().__init__(role, PeerState.AWAIT_CHALLENGE, limits=limits)
        self.challenge: PeerChallenge | None = None
        self.auth: PeerAuth | None = None


    # --- the rules --------------------------------------------------------------------

    def _apply(self, msg: Message, *, sender: PeerRole) -> None:
        kind = msg.KIND
        if type(msg) not in _SENDER:
            self._illegal(f"{kind} belongs to the coordinator connection, not to a direct link")
        allowed = _SENDER[type(msg)]
        if allowed is not None and allowed is not sender:
            self._illegal(f"a {sender.value} never sends {kind}; only the {allowed.value} does")
        if isinstance(msg, Bye):
            self._close(CLOSE_NORMAL, f"{sender.value} said goodbye: {msg.reason}")
            return
        if isinstance(msg, Error):
            if msg.step_id is not None:
                self._illegal("an error naming a step belongs to the coordinator connection")
            self._close(msg.to_exception().close_code, f"{sender.value} reported {msg.code}: {msg.message}")
            return
        legal_in, leads_to = _ORDER[type(msg)]
        if self.state is not legal_in:
            self._illegal(f"{kind} is only legal in state {legal_in.name}, not {self.state.name}")
        if isinstance(msg, PeerChallenge):
            self.challenge = msg
        elif isinstance(msg, PeerAuth):
            self.auth = msg
        self.state = leads_to

    def _illegal(self, problem: str) -> None:
        raise ProtocolViolation(
            f"direct link ({self.role.value}): {problem}",
            hint="the other volunteer runs an incompatible or faulty Butterfly; update both to the same release",
        )


__all__ = ["PeerConnection", "PeerRole", "PeerState"]
