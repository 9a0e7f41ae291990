"""The connection state machine, driven from both ends with no network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import AuthFailed, ProtocolViolation
from core.protocol.frames import PROTOCOL_VERSION, Limits
from core.protocol.messages import (
    Accepted,
    Auth,
    Bye,
    Challenge,
    Drain,
    EndSession,
    Error,
    FetchTensor,
    Heartbeat,
    HeartbeatAck,
    LoadProgress,
    Message,
    Ready,
    SetSlowdown,
    TensorChunk,
    Unassign,
    decode_message,
)
from core.protocol.session import MAX_CLOSE_REASON_BYTES, ProtocolConnection, Role, State

from tests.core.protocol.samples import assign, every_message, forward, hello, result, same

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
C, V = Role.COORDINATOR, Role.VOLUNTEER
CHALLENGE = Challenge(pool_public_key=b"\x02" * 32, pool_name="pool", nonce=b"\x03" * 32, pool_signature=b"\x04" * 64)
AUTH = Auth(signature=b"\x05" * 64)
ACCEPTED = Accepted(node_id="bf1node", heartbeat_interval_s=5.0)


class Pair:
    """A coordinator and a volunteer machine wired back to back."""

    def __init__(self) -> None:
        self.c = ProtocolConnection(C)
        self.v = ProtocolConnection(V)

    def send(self, sender: ProtocolConnection, msg: Message) -> Message:
        """``sender`` sends ``msg``; the other end receives it; return what it saw."""
        receiver = self.v if sender is self.c else self.c
        sender.send(msg)
        frames = sender.data_to_send()
        assert len(frames) == 1
        receiver.receive(frames[0])
        (event,) = receiver.events()
        assert same(event, msg)
        return event

    def states(self) -> tuple[State, State]:
        return self.c.state, self.v.state


def handshake() -> Pair:
    pair = Pair()
    pair.send(pair.v, hello())
    pair.send(pair.c, CHALLENGE)
    pair.send(pair.v, AUTH)
    pair.send(pair.c, ACCEPTED)
    return pair


def serving(assignment_id: str = "a1") -> Pair:
    pair = handshake()
    pair.send(pair.c, assign(assignment_id))
    pair.send(pair.v, Ready(assignment_id=assignment_id, load_seconds=1.0))
    return pair


def test_the_handshake_moves_both_ends_through_the_same_states() -> None:
    pair = Pair()
    assert pair.states() == (State.AWAIT_HELLO, State.AWAIT_HELLO)
    steps = [(pair.v, hello(), State.AWAIT_CHALLENGE), (pair.c, CHALLENGE, State.AWAIT_AUTH),
             (pair.v, AUTH, State.AWAIT_ACCEPT), (pair.c, ACCEPTED, State.AUTHENTICATED)]
    for sender, msg, state in steps:
        pair.send(sender, msg)
        assert pair.states() == (state, state)
    assert pair.c.hello == hello() and pair.v.hello == hello()
    assert pair.c.challenge == CHALLENGE and pair.v.challenge == CHALLENGE
    assert pair.c.close_code is None


def test_a_whole_life_load_serve_replan_drain_bye() -> None:
    pair = handshake()
    pair.send(pair.c, Heartbeat(seq=1, sent_at=1.0))
    pair.send(pair.v, HeartbeatAck(seq=1, sent_at=1.0))
    pair.send(pair.v, Heartbeat(seq=1, sent_at=9.0))
    pair.send(pair.c, HeartbeatAck(seq=1, sent_at=9.0))
    pair.send(pair.c, assign("a1"))
    assert pair.states() == (State.ASSIGNED, State.ASSIGNED)
    pair.send(pair.v, FetchTensor(assignment_id="a1", name="w", offset=0, length=100))
    pair.send(pair.v, FetchTensor(assignment_id="a1", name="w", offset=100, length=100))
    pair.send(pair.c, TensorChunk(assignment_id="a1", name="w", offset=100, total=150,
                                  data=torch.zeros(50, dtype=torch.uint8)))
    pair.send(pair.c, TensorChunk(assignment_id="a1", name="w", offset=0, total=150,
                                  data=torch.zeros(100, dtype=torch.uint8)))
    pair.send(pair.v, LoadProgress(assignment_id="a1", done_bytes=150, total_bytes=150))
    pair.send(pair.v, Ready(assignment_id="a1", load_seconds=0.5))
    assert pair.states() == (State.SERVING, State.SERVING)
    pair.send(pair.c, forward(1))
    pair.send(pair.c, forward(2, session_id="s2"))
    pair.send(pair.v, result(2, session_id="s2"))  # answers may come in any order
    pair.send(pair.v, Error(code="StageFailed", message="cache too short", step_id=1))
    pair.send(pair.c, EndSession(session_id="s1"))
    pair.send(pair.c, SetSlowdown(factor=3.0))
    # Re-plan, make-before-break: the old assignment keeps serving while the new one loads.
    pair.send(pair.c, assign("a2"))
    assert pair.states() == (State.SERVING, State.SERVING)
    pair.send(pair.c, forward(3, assignment_id="a1"))
    pair.send(pair.v, Ready(assignment_id="a2", load_seconds=0.5))
    pair.send(pair.c, Unassign(assignment_id="a1"))
    pair.send(pair.v, result(3))
    pair.send(pair.c, forward(4, assignment_id="a2"))
    pair.send(pair.c, Unassign(assignment_id="a2"))
    assert pair.states() == (State.AUTHENTICATED, State.AUTHENTICATED)
    pair.send(pair.v, result(4))
    pair.send(pair.v, Drain(reason="user paused"))
    assert pair.states() == (State.DRAINING, State.DRAINING)
    pair.send(pair.c, Heartbeat(seq=2, sent_at=2.0))
    pair.send(pair.v, Bye(reason="leaving"))
    assert pair.states() == (State.CLOSED, State.CLOSED)
    assert pair.c.close_code == pair.v.close_code == 1000
    assert pair.c.close_reason == "volunteer said goodbye: leaving"


@pytest.mark.parametrize("step", range(5))
@pytest.mark.parametrize("ender", ["volunteer bye", "coordinator bye", "volunteer error", "coordinator refuses"])
def test_either_side_may_end_the_handshake_at_any_step(step: int, ender: str) -> None:
    pair = Pair()
    script = [(pair.v, hello()), (pair.c, CHALLENGE), (pair.v, AUTH), (pair.c, ACCEPTED)]
    for sender, msg in script[:step]:
        pair.send(sender, msg)
    if ender == "coordinator refuses":
        pair.c.fail(AuthFailed("invite expired at 2030-01-01T00:00:00+00:00", hint="ask the host for a new invite"))
        (frame,) = pair.c.data_to_send()
        pair.v.receive(frame)
        (event,) = pair.v.events()
        assert isinstance(event, Error) and isinstance(event.to_exception(), AuthFailed)
        expected_code = AuthFailed.close_code
    elif ender == "volunteer error":
        pair.send(pair.v, Error(code="ConfigError", message="bad settings"))
        expected_code = 1011
    else:
        pair.send(pair.v if ender.startswith("volunteer") else pair.c, Bye(reason="bye"))
        expected_code = 1000
    assert pair.states() == (State.CLOSED, State.CLOSED)
    assert pair.c.close_code == pair.v.close_code == expected_code


def refused(conn: ProtocolConnection, msg: Message, match: str) -> None:
    """``conn`` must refuse ``msg`` on arrival: closed, Error queued for the peer, exception raised."""
    with pytest.raises(ProtocolViolation, match=match):
        conn.receive(msg.to_frame())
    assert conn.state is State.CLOSED and conn.close_code == 1008
    assert conn.events() == []
    (frame,) = conn.data_to_send()
    error = decode_message(frame)
    assert isinstance(error, Error) and error.code == "ProtocolViolation" and error.step_id is None
    assert conn.close_reason is not None and conn.close_reason in f"{conn.role.value} connection: {error.message}"


def fresh(role: Role) -> ProtocolConnection:
    return ProtocolConnection(role)


def authenticated(role: Role) -> ProtocolConnection:
    pair = handshake()
    return pair.c if role is C else pair.v


def assigned_end(role: Role) -> ProtocolConnection:
    pair = handshake()
    pair.send(pair.c, assign())
    return pair.c if role is C else pair.v


def serving_end(role: Role) -> ProtocolConnection:
    pair = serving()
    return pair.c if role is C else pair.v


ILLEGAL: list[tuple[str, Callable[[], ProtocolConnection], Callable[[], Message], str]] = [
    ("volunteer never receives hello", lambda: fresh(V), hello, "a coordinator never sends hello"),
    ("coordinator never receives challenge", lambda: fresh(C), lambda: CHALLENGE,
     "a volunteer never sends challenge"),
    ("auth before hello", lambda: fresh(C), lambda: AUTH, "auth is only legal in state AWAIT_AUTH, not AWAIT_HELLO"),
    ("hello twice", lambda: serving_end(C), hello, "hello is only legal in state AWAIT_HELLO"),
    ("accepted twice", lambda: authenticated(V), lambda: ACCEPTED, "accepted is only legal in state AWAIT_ACCEPT"),
    ("assign before auth", lambda: fresh(V), assign, "assign before the handshake finished"),
    ("heartbeat before auth", lambda: fresh(C), lambda: Heartbeat(seq=1, sent_at=0.0), "before the handshake"),
    ("coordinator never receives assign", lambda: authenticated(C), assign, "a volunteer never sends assign"),
    ("coordinator never receives forward", lambda: serving_end(C), forward, "a volunteer never sends forward"),
    ("volunteer never receives result", lambda: serving_end(V), result, "a coordinator never sends result"),
    ("forward before ready", lambda: authenticated(V), forward, "assignment 'a1', which is not ready"),
    ("forward to an unknown assignment", lambda: serving_end(V), lambda: forward(assignment_id="zz"), "not ready"),
    ("result nobody asked for", lambda: serving_end(C), lambda: result(99), "answers step 99, which is not outstanding"),
    ("step error nobody asked for", lambda: serving_end(C), lambda: Error(code="X", message="m", step_id=5),
     "answers step 5"),
    ("step error from the coordinator", lambda: serving_end(V), lambda: Error(code="X", message="m", step_id=5),
     "comes only from the volunteer"),
    ("assign reusing an id", lambda: serving_end(V), assign, "reuses assignment id 'a1'"),
    ("ready twice", lambda: serving_end(C), lambda: Ready(assignment_id="a1", load_seconds=1.0),
     "ready repeated for assignment 'a1'"),
    ("ready for an unknown assignment", lambda: serving_end(C), lambda: Ready(assignment_id="zz", load_seconds=1.0),
     "'zz', which is not assigned"),
    ("fetch for an unknown assignment", lambda: serving_end(C),
     lambda: FetchTensor(assignment_id="zz", name="w", offset=0, length=1), "'zz', which is not assigned"),
    ("chunk nobody asked for", lambda: serving_end(V),
     lambda: TensorChunk(assignment_id="a1", name="w", offset=0, total=4, data=torch.zeros(4, dtype=torch.uint8)),
     "answers no fetch_tensor"),
    ("unassign of an unknown assignment", lambda: serving_end(V), lambda: Unassign(assignment_id="zz"),
     "not assigned"),
]


@pytest.mark.parametrize(("make_conn", "make_msg", "match"), [case[1:] for case in ILLEGAL],
                         ids=[case[0] for case in ILLEGAL])
def test_illegal_messages_close_the_connection(
    make_conn: Callable[[], ProtocolConnection], make_msg: Callable[[], Message], match: str
) -> None:
    refused(make_conn(), make_msg(), match)


def test_a_result_must_name_the_session_of_its_step() -> None:
    pair = serving()
    pair.send(pair.c, forward(7, session_id="s1"))
    refused(pair.c, result(7, session_id="s2"), "names session 's2', the step was for 's1'")


def test_a_chunk_larger_than_asked_is_refused() -> None:
    pair = handshake()
    pair.send(pair.c, assign())
    pair.send(pair.v, FetchTensor(assignment_id="a1", name="w", offset=0, length=10))
    chunk = TensorChunk(assignment_id="a1", name="w", offset=0, total=99, data=torch.zeros(11, dtype=torch.uint8))
    with pytest.raises(ProtocolViolation, match="carries 11 bytes of 'w', only 10 were asked for"):
        pair.c.send(chunk)
    refused(pair.v, chunk, "carries 11 bytes of 'w', only 10 were asked for")


def test_a_hello_of_another_protocol_version_closes_with_its_own_code() -> None:
    conn = fresh(C)
    with pytest.raises(ProtocolViolation, match=f"volunteer speaks protocol 9, this side speaks {PROTOCOL_VERSION}"):
        conn.receive(hello(protocol_version=9).to_frame())
    assert conn.state is State.CLOSED and conn.close_code == 4001


def test_garbage_and_oversized_frames_close_with_their_codes() -> None:
    conn = authenticated(V)
    with pytest.raises(ProtocolViolation, match="not a Butterfly frame"):
        conn.receive(b"GET / HTTP/1.1\r\n")
    assert conn.close_code == 1008
    small = ProtocolConnection(C, limits=Limits(max_frame_bytes=64))
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 64 bytes"):
        small.receive(hello().to_frame())
    assert small.state is State.CLOSED and small.close_code == 1009
    assert isinstance(decode_message(small.data_to_send()[0]), Error)


def test_illegal_sends_raise_and_change_nothing() -> None:
    pair = handshake()
    with pytest.raises(ProtocolViolation, match="a volunteer never sends assign"):
        pair.v.send(assign())
    with pytest.raises(ProtocolViolation, match="not ready"):
        pair.c.send(forward())
    with pytest.raises(ProtocolViolation, match="hello is only legal"):
        pair.v.send(hello())
    assert pair.states() == (State.AUTHENTICATED, State.AUTHENTICATED)
    assert pair.c.data_to_send() == [] and pair.v.data_to_send() == []
    pair.send(pair.c, assign())  # still usable


def test_messages_in_flight_across_an_unassign_are_tolerated() -> None:
    pair = handshake()
    pair.send(pair.c, assign("a1"))
    pair.v.send(FetchTensor(assignment_id="a1", name="w", offset=0, length=8))
    pair.v.send(LoadProgress(assignment_id="a1", done_bytes=0, total_bytes=8))
    pair.v.send(Ready(assignment_id="a1", load_seconds=0.1))
    in_flight = pair.v.data_to_send()
    pair.c.send(Unassign(assignment_id="a1"))  # crosses the volunteer's messages on the wire
    for frame in in_flight:
        pair.c.receive(frame)
    assert len(pair.c.events()) == 3 and pair.c.state is State.AUTHENTICATED
    with pytest.raises(ProtocolViolation, match="not ready"):
        pair.c.send(forward())


def test_an_assign_crossing_the_volunteers_drain_is_tolerated() -> None:
    pair = serving()
    pair.v.send(Drain(reason="battery low"))
    drain = pair.v.data_to_send()
    pair.c.send(assign("a2"))  # sent before the drain arrived
    pair.v.receive(pair.c.data_to_send()[0])
    pair.c.receive(drain[0])
    assert [m.KIND for m in pair.v.events() + pair.c.events()] == ["assign", "drain"]
    assert pair.states() == (State.DRAINING, State.DRAINING)
    with pytest.raises(ProtocolViolation, match="assign after drain"):
        pair.c.send(assign("a3"))
    pair.send(pair.c, forward(1))  # running work goes on while draining
    pair.send(pair.v, result(1))


def test_after_the_coordinator_drains_an_assign_is_a_violation() -> None:
    pair = serving()
    pair.send(pair.c, Drain(reason="host shutting down"))
    refused(pair.v, assign("a2"), "assign after drain")


def test_data_after_close_is_discarded_and_sends_are_refused() -> None:
    pair = serving()
    pair.send(pair.c, Bye(reason="done"))
    pair.v.receive(b"anything at all")
    pair.v.receive(forward().to_frame())
    assert pair.v.events() == [] and pair.v.state is State.CLOSED
    with pytest.raises(ProtocolViolation, match="cannot send heartbeat: the connection is closed"):
        pair.v.send(Heartbeat(seq=1, sent_at=0.0))


def test_fail_is_idempotent_and_the_close_reason_fits_a_close_frame() -> None:
    conn = authenticated(C)
    conn.fail(AuthFailed("ü" * 500))
    conn.fail(AuthFailed("second"))
    assert len(conn.data_to_send()) == 1
    assert conn.close_code == 4003 and conn.close_reason is not None
    assert len(conn.close_reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    assert conn.close_reason.endswith("...")


# --- fuzzing: only ProtocolViolation escapes, and a violation always closes -----------


START: dict[str, Callable[[Role], ProtocolConnection]] = {
    "fresh": fresh, "authenticated": authenticated, "assigned": assigned_end, "serving": serving_end,
}


def feed(conn: ProtocolConnection, data: bytes) -> None:
    try:
        conn.receive(data)
    except ProtocolViolation:
        assert conn.state is State.CLOSED and conn.close_code is not None
        (frame,) = conn.data_to_send()
        assert isinstance(decode_message(frame), Error)


@FUZZ
@given(st.sampled_from([C, V]), st.sampled_from(sorted(START)), st.lists(st.binary(max_size=200), max_size=4))
def test_random_bytes_into_a_connection(role: Role, start: str, chunks: list[bytes]) -> None:
    conn = START[start](role)
    for data in chunks:
        feed(conn, data)


@FUZZ
@given(st.sampled_from([C, V]), st.sampled_from(sorted(START)), st.lists(st.integers(0, 21), max_size=12))
def test_random_sequences_of_valid_messages(role: Role, start: str, picks: list[int]) -> None:
    conn = START[start](role)
    messages = every_message()
    for pick in picks:
        feed(conn, messages[pick % len(messages)].to_frame())
    assert conn.state is not State.CLOSED or conn.close_code is not None


@FUZZ
@given(st.sampled_from([C, V]), st.integers(0, 21), st.data())
def test_mutated_valid_messages_into_a_serving_connection(role: Role, pick: int, data: st.DataObject) -> None:
    conn = serving_end(role)
    messages = every_message()
    frame = bytearray(messages[pick % len(messages)].to_frame())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    feed(conn, bytes(frame))


def test_every_sample_message_is_legal_somewhere() -> None:
    """A guard for the fuzz tests above: they exercise accepting paths, not only refusals."""
    accepted = set()
    for msg in every_message():
        for role in (C, V):
            for start in START.values():
                conn = start(role)
                try:
                    conn.receive(msg.to_frame())
                except ProtocolViolation:
                    continue
                accepted.add(msg.KIND)
    assert accepted >= {"hello", "assign", "forward", "ready", "heartbeat", "drain", "bye", "error"}


# --- direct links: steps whose input comes from another volunteer -----------------------


def awaiting_forward(step_id: int = 5) -> Message:
    from core.protocol.messages import Forward

    return Forward(step_id=step_id, session_id="s1", assignment_id="a1", start_pos=3, x=torch.empty(0),
                   from_node="bf1upstream", next_node="bf1downstream", next_step=11)


def test_a_feed_supplies_the_input_of_a_step_that_awaits_a_peer() -> None:
    from core.protocol.messages import Feed, Result

    pair = serving()
    pair.send(pair.c, awaiting_forward(5))
    pair.send(pair.c, Feed(step_id=5, x=torch.randn(1, 576)))
    with pytest.raises(ProtocolViolation, match="not waiting for a peer's input"):  # fed once only
        pair.c.send(Feed(step_id=5, x=torch.randn(1, 576)))
    pair.send(pair.v, Result(step_id=5, session_id="s1", compute_s=0.01, y=torch.randn(1, 576), handed_off=True))
    assert pair.states() == (State.SERVING, State.SERVING)


def test_a_feed_for_a_step_with_its_input_in_the_forward_is_a_violation() -> None:
    from core.protocol.messages import Feed

    pair = serving()
    pair.send(pair.c, forward(7))
    with pytest.raises(ProtocolViolation, match="not waiting for a peer's input"):
        pair.c.send(Feed(step_id=7, x=torch.randn(1, 576)))
    refused(serving_end(V), Feed(step_id=7, x=torch.randn(1, 576)), "not waiting for a peer's input")


def test_a_feed_crossing_the_answer_of_a_handed_off_step_is_tolerated_by_the_volunteer() -> None:
    from core.protocol.messages import Feed, Result

    pair = serving()
    pair.send(pair.c, awaiting_forward(5))
    pair.c.send(Feed(step_id=5, x=torch.randn(1, 576)))  # in flight ...
    in_flight = pair.c.data_to_send()
    pair.send(pair.v, Result(step_id=5, session_id="s1", compute_s=0.01, y=torch.randn(1, 576)))  # ... as the answer leaves
    pair.v.receive(in_flight[0])
    assert [m.KIND for m in pair.v.events()] == ["feed"] and pair.v.state is State.SERVING


def test_messages_of_direct_links_are_never_legal_between_coordinator_and_volunteer() -> None:
    from core.protocol.messages import Handoff, PeerAuth, PeerChallenge

    for msg in (PeerChallenge(node_public_key=b"\x01" * 32, nonce=b"\x02" * 32),
                PeerAuth(node_public_key=b"\x01" * 32, signature=b"\x03" * 64),
                Handoff(step_id=1, session_id="s1", start_pos=0, x=torch.randn(1, 576))):
        for role in (C, V):
            refused(serving_end(role), msg, "belongs to direct links")


def test_a_forward_awaiting_a_peer_carries_no_input() -> None:
    from core.protocol.messages import Forward

    with pytest.raises(ProtocolViolation, match="must be empty"):
        Forward(step_id=1, session_id="s1", assignment_id="a1", start_pos=0, x=torch.randn(1, 576), from_node="bf1up")
