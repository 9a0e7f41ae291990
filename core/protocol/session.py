"""The connection state machine, sans I/O: bytes in, messages out, and back.

The websocket loops feed each received binary message to :meth:`ProtocolConnection.receive`,
take the decoded messages from :meth:`~ProtocolConnection.events`, hand outgoing
messages to :meth:`~ProtocolConnection.send` and put what
:meth:`~ProtocolConnection.data_to_send` returns on the wire. Nothing here touches a
socket, a clock or an event loop.

The machine checks *direction* (who may send what), *order* (handshake first:
Hello -> Challenge -> Auth -> Accepted; then Assign -> FetchTensor/TensorChunk ->
LoadProgress -> Ready -> Forward/Result) and *references* (a chunk answers a fetch
that was asked, a Forward names a ready assignment, a Result answers a Forward that is
outstanding). Whether an invite or a signature is valid is not its business: the
coordinator checks those with :mod:`core.identity` and calls :meth:`fail` to refuse.

Both sides may have messages in flight at once, so the receiving side tolerates what
the peer could legitimately have sent before seeing our last message: messages about an
assignment we already dropped, and an Assign arriving after our own Drain. Anything
received after the connection closed is discarded, as websockets do.
"""

from __future__ import annotations

from enum import Enum

from core.errors import ProtocolViolation, VersionMismatch
from core.protocol.frames import PROTOCOL_VERSION, Limits
from core.protocol.machine import CLOSE_NORMAL, MAX_CLOSE_REASON_BYTES, FrameMachine
from core.protocol.messages import (
    Accepted,
    Assign,
    Auth,
    Bye,
    Challenge,
    Drain,
    EndSession,
    Error,
    Feed,
    FetchTensor,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LinkProbe,
    LinkProbeAck,
    LoadProgress,
    Message,
    ModelInfo,
    ProfileUpdate,
    Ready,
    Result,
    SetSlowdown,
    TensorChunk,
    Unassign,
)

MAX_ASSIGNMENTS: int = 1024
"""Assignments one connection may ever receive (re-plans included)."""
MAX_PENDING_FETCHES: int = 256
"""Tensor fetches a volunteer may have unanswered at once."""
MAX_OUTSTANDING_STEPS: int = 4096
"""Forward steps the coordinator may have unanswered on one connection."""


class Role(Enum):
    """Which end of the connection this machine is."""

    COORDINATOR = "coordinator"
    VOLUNTEER = "volunteer"

    @property
    def peer(self) -> Role:
        """The role at the other end."""
        return Role.VOLUNTEER if self is Role.COORDINATOR else Role.COORDINATOR


class State(Enum):
    """Where the conversation stands; both ends move through the same states.

    The handshake states name the message that is due next, whichever side owes it.
    After ``AUTHENTICATED``: ``ASSIGNED`` while some assignment is loading and none is
    ready, ``SERVING`` once one is ready, ``DRAINING`` after either side sent Drain.
    """

    AWAIT_HELLO = "await_hello"
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_AUTH = "await_auth"
    AWAIT_ACCEPT = "await_accept"
    AUTHENTICATED = "authenticated"
    ASSIGNED = "assigned"
    SERVING = "serving"
    DRAINING = "draining"
    CLOSED = "closed"


_C, _V = Role.COORDINATOR, Role.VOLUNTEER

_SENDER: dict[type[Message], Role | None] = {
    Hello: _V, Challenge: _C, Auth: _V, Accepted: _C,
    Assign: _C, Unassign: _C, FetchTensor: _V, TensorChunk: _C, LoadProgress: _V, Ready: _V,
    Forward: _C, Result: _V, Feed: _C, EndSession: _C, SetSlowdown: _C,
    ModelInfo: _C, ProfileUpdate: _V, LinkProbe: _C, LinkProbeAck: _V,
    Heartbeat: None, HeartbeatAck: None, Drain: None, Error: None, Bye: None,
}
"""Who may send each message (None: either side). Kinds not listed (the direct-link messages
between volunteers, :mod:`core.protocol.peer`) are never legal on this connection."""

_HANDSHAKE: dict[type[Message], tuple[State, State]] = {
    Hello: (State.AWAIT_HELLO, State.AWAIT_CHALLENGE),
    Challenge: (State.AWAIT_CHALLENGE, State.AWAIT_AUTH),
    Auth: (State.AWAIT_AUTH, State.AWAIT_ACCEPT),
    Accepted: (State.AWAIT_ACCEPT, State.AUTHENTICATED),
}
"""Handshake messages: the state each is legal in and the state it leads to."""

_AFTER_AUTH = frozenset({State.AUTHENTICATED, State.ASSIGNED, State.SERVING, State.DRAINING})


class ProtocolConnection(FrameMachine):
    """One end of a coordinator <-> volunteer connection, as a pure state machine.

    ``state`` is where the conversation stands; ``close_code``/``close_reason`` are set
    once it is over (the websocket close code and reason to use). ``hello`` and
    ``challenge`` keep the handshake messages seen, for the signature checks.
    """

    CLOSED = State.CLOSED
    NOUN = "connection"

    def __init__(self, role: Role, *, limits: Limits = Limits()) -> None:
        super().__init__(role, State.AWAIT_HELLO, limits=limits)
        self.hello: Hello | None = None
        self.challenge: Challenge | None = None
        self._assigned: set[str] = set()  # every assignment id ever given on this connection
        self._active: set[str] = set()  # assigned and not dropped
        self._ready: set[str] = set()  # active and loaded
        self._fetches: dict[tuple[str, str, int], int] = {}  # (assignment, tensor, offset) -> length asked
        self._steps: dict[int, str] = {}  # outstanding Forward step -> its session
        self._unfed: set[int] = set()  # outstanding steps whose input comes from a peer, not yet fed
        self._answered_unfed: dict[int, None] = {}  # recently answered such steps: a late Feed may still come
        self._coordinator_drained = False
        self._volunteer_drained = False

    # --- the rules --------------------------------------------------------------------

    def _apply(self, msg: Message, *, sender: Role) -> None:
        """Check ``msg`` from ``sender`` against the state; update the state if legal."""
        kind = msg.KIND
        if type(msg) not in _SENDER:
            self._illegal(f"{kind} belongs to direct links between volunteers, not to this connection")
        allowed_sender = _SENDER[type(msg)]
        if allowed_sender is not None and allowed_sender is not sender:
            self._illegal(f"a {sender.value} never sends {kind}; only the {allowed_sender.value} does")
        if isinstance(msg, Bye):
            self._close(CLOSE_NORMAL, f"{sender.value} said goodbye: {msg.reason}")
            return
        if isinstance(msg, Error) and msg.step_id is None:
            self._close(msg.to_exception().close_code, f"{sender.value} reported {msg.code}: {msg.message}")
            return
        step = _HANDSHAKE.get(type(msg))
        if step is not None:
            self._handshake(msg, *step)
            return
        if self.state not in _AFTER_AUTH:
            self._illegal(f"{kind} before the handshake finished (state {self.state.name})")
        self._after_auth(msg, sender=sender)
        self._settle()

    def _handshake(self, msg: Message, legal_in: State, leads_to: State) -> None:
        if self.state is not legal_in:
            self._illegal(f"{msg.KIND} is only legal in state {legal_in.name}, not {self.state.name}")
        if isinstance(msg, Hello):
            if msg.protocol_version != PROTOCOL_VERSION:
                raise VersionMismatch(
                    f"volunteer speaks protocol {msg.protocol_version}, this side speaks {PROTOCOL_VERSION}",
                    hint="update Butterfly so both sides run the same protocol version",
                )
            self.hello = msg
        elif isinstance(msg, Challenge):
            self.challenge = msg
        self.state = leads_to

    def _after_auth(self, msg: Message, *, sender: Role) -> None:
        # ``lenient``: we are the coordinator reading the volunteer, who may not yet have
        # seen an Unassign of ours; it may still speak of assignments we dropped.
        lenient = sender is not self.role and self.role is Role.COORDINATOR
        kind = msg.KIND
        if isinstance(msg, Assign):
            if msg.assignment_id in self._assigned:
                self._illegal(f"assign reuses assignment id {msg.assignment_id!r}")
            if self._coordinator_drained or (self._volunteer_drained and self.role is Role.COORDINATOR):
                self._illegal("assign after drain: a draining connection takes no new work")
            if len(self._assigned) >= MAX_ASSIGNMENTS:
                self._illegal(f"more than {MAX_ASSIGNMENTS} assignments on one connection")
            self._assigned.add(msg.assignment_id)
            self._active.add(msg.assignment_id)
        elif isinstance(msg, Unassign):
            self._require_assignment(kind, msg.assignment_id, lenient=False)
            self._active.discard(msg.assignment_id)
            self._ready.discard(msg.assignment_id)
        elif isinstance(msg, FetchTensor):
            self._require_assignment(kind, msg.assignment_id, lenient=lenient)
            key = (msg.assignment_id, msg.name, msg.offset)
            if key in self._fetches:
                self._illegal(f"fetch_tensor repeats an unanswered fetch of {msg.name!r} at offset {msg.offset}")
            if len(self._fetches) >= MAX_PENDING_FETCHES:
                self._illegal(f"more than {MAX_PENDING_FETCHES} unanswered fetch_tensor requests")
            self._fetches[key] = msg.length
        elif isinstance(msg, TensorChunk):
            key = (msg.assignment_id, msg.name, msg.offset)
            asked = self._fetches.get(key)
            if asked is None:
                self._illegal(f"tensor_chunk of {msg.name!r} at offset {msg.offset} answers no fetch_tensor")
            if msg.data.numel() > asked:
                self._illegal(f"tensor_chunk carries {msg.data.numel()} bytes of {msg.name!r}, "
                              f"only {asked} were asked for")
            del self._fetches[key]
        elif isinstance(msg, LoadProgress):
            self._require_assignment(kind, msg.assignment_id, lenient=lenient)
        elif isinstance(msg, Ready):
            self._require_assignment(kind, msg.assignment_id, lenient=lenient)
            if msg.assignment_id in self._ready:
                self._illegal(f"ready repeated for assignment {msg.assignment_id!r}")
            if msg.assignment_id in self._active:
                self._ready.add(msg.assignment_id)
        elif isinstance(msg, Forward):
            if msg.assignment_id not in self._ready:
                self._illegal(f"forward names assignment {msg.assignment_id!r}, which is not ready")
            if msg.step_id in self._steps:
                self._illegal(f"forward reuses step id {msg.step_id}, which is still outstanding")
            if len(self._steps) >= MAX_OUTSTANDING_STEPS:
                self._illegal(f"more than {MAX_OUTSTANDING_STEPS} outstanding forward steps")
            self._steps[msg.step_id] = msg.session_id
            if msg.awaits_input:
                self._unfed.add(msg.step_id)
        elif isinstance(msg, Feed):
            # The coordinator may feed a step the volunteer already answered from a peer's
            # hand-off: the answer was on its way. The volunteer tolerates that; nothing else.
            late = self.role is Role.VOLUNTEER and msg.step_id in self._answered_unfed
            if msg.step_id not in self._unfed and not late:
                self._illegal(f"feed names step {msg.step_id}, which is not waiting for a peer's input")
            self._unfed.discard(msg.step_id)
        elif isinstance(msg, Result):
            self._answer_step(kind, msg.step_id, msg.session_id)
        elif isinstance(msg, Error):  # answers one step; fatal errors were handled before
            if sender is not Role.VOLUNTEER:
                self._illegal("an error answering a step comes only from the volunteer")
            self._answer_step(kind, msg.step_id, None)
        elif isinstance(msg, Drain):
            if sender is Role.COORDINATOR:
                self._coordinator_drained = True
            else:
                self._volunteer_drained = True
        else:  # legal any time after auth
            assert isinstance(
                msg, (EndSession, Heartbeat, HeartbeatAck, SetSlowdown, ModelInfo, ProfileUpdate, LinkProbe, LinkProbeAck)
            ), kind

    def _require_assignment(self, kind: str, assignment_id: str, *, lenient: bool) -> None:
        known = self._assigned if lenient else self._active
        if assignment_id not in known:
            self._illegal(f"{kind} names assignment {assignment_id!r}, which is not assigned")

    def _answer_step(self, kind: str, step_id: int | None, session_id: str | None) -> None:
        expected = self._steps.get(step_id) if step_id is not None else None
        if expected is None:
            self._illegal(f"{kind} answers step {step_id}, which is not outstanding")
        if session_id is not None and session_id != expected:
            self._illegal(f"{kind} for step {step_id} names session {session_id!r}, the step was for {expected!r}")
        del self._steps[step_id]  # type: ignore[arg-type]
        if step_id in self._unfed:
            self._unfed.discard(step_id)  # type: ignore[arg-type]
            self._answered_unfed[step_id] = None  # type: ignore[index]
            if len(self._answered_unfed) > MAX_OUTSTANDING_STEPS:
                del self._answered_unfed[next(iter(self._answered_unfed))]

    def _settle(self) -> None:
        if self._coordinator_drained or self._volunteer_drained:
            self.state = State.DRAINING
        elif self._ready:
            self.state = State.SERVING
        elif self._active:
            self.state = State.ASSIGNED
        else:
            self.state = State.AUTHENTICATED

    def _illegal(self, problem: str) -> None:
        raise ProtocolViolation(
            f"{self.role.value} connection: {problem}",
            hint="the peer runs an incompatible or faulty Butterfly; update both sides to the same release",
        )



__all__ = ["CLOSE_NORMAL", "MAX_CLOSE_REASON_BYTES", "ProtocolConnection", "Role", "State"]
