"""The direct-link state machine, driven from both ends with no network."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import AuthFailed, ProtocolViolation
from core.protocol.frames import Limits
from core.protocol.messages import Bye, Error, Handoff, Message, PeerAuth, PeerChallenge, decode_message
from core.protocol.peer import PeerConnection, PeerRole, PeerState
from core.protocol.session import MAX_CLOSE_REASON_BYTES

from tests.core.protocol.samples import every_message, same

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
L, D = PeerRole.LISTENER, PeerRole.DIALER
CHALLENGE = PeerChallenge(node_public_key=b"\x01" * 32, nonce=b"\x02" * 32)
AUTH = PeerAuth(node_public_key=b"\x03" * 32, signature=b"\x04" * 64)


def handoff(step_id: int = 1) -> Handoff:
    return Handoff(step_id=step_id, session_id="s1", start_pos=4, x=torch.randn(1, 2, 8))


class Pair:
    """A listener and a dialer wired back to back."""

    def __init__(self) -> None:
        self.listener = PeerConnection(L)
        self.dialer = PeerConnection(D)

    def send(self, sender: PeerConnection, msg: Message) -> Message:
        """``sender`` sends ``msg``; the other end receives it; return what it saw."""
        receiver = self.dialer if sender is self.listener else self.listener
        sender.send(msg)
        (frame,) = sender.data_to_send()
        receiver.receive(frame)
        (event,) = receiver.events()
        assert same(event, msg)
        return event

    def open(self) -> Pair:
        self.send(self.listener, CHALLENGE)
        self.send(self.dialer, AUTH)
        return self


def frame(msg: Message) -> bytes:
    return msg.to_frame()


def test_the_legal_order_opens_the_link_and_carries_handoffs() -> None:
    pair = Pair()
    assert pair.listener.state is pair.dialer.state is PeerState.AWAIT_CHALLENGE
    pair.send(pair.listener, CHALLENGE)
    assert pair.listener.state is pair.dialer.state is PeerState.AWAIT_AUTH
    assert pair.dialer.challenge == CHALLENGE
    pair.send(pair.dialer, AUTH)
    assert pair.listener.state is pair.dialer.state is PeerState.OPEN
    assert pair.listener.auth == AUTH
    for step in range(3):
        seen = pair.send(pair.dialer, handoff(step))
        assert isinstance(seen, Handoff) and seen.step_id == step
    pair.send(pair.listener, Bye(reason="leaving"))
    assert pair.listener.state is pair.dialer.state is PeerState.CLOSED
    assert pair.dialer.close_code == pair.listener.close_code == 1000
    assert "listener said goodbye: leaving" in (pair.dialer.close_reason or "")


@pytest.mark.parametrize("ender", ["listener", "dialer"])
@pytest.mark.parametrize("after", [0, 1, 2])
def test_either_side_may_end_the_link_at_any_step(ender: str, after: int) -> None:
    pair = Pair()
    for msg, sender in [(CHALLENGE, pair.listener), (AUTH, pair.dialer)][:after]:
        pair.send(sender, msg)
    sender = pair.listener if ender == "listener" else pair.dialer
    pair.send(sender, Error.from_exception(AuthFailed("bad signature", hint="same pool?")))
    assert pair.listener.state is pair.dialer.state is PeerState.CLOSED
    receiver = pair.dialer if sender is pair.listener else pair.listener
    assert receiver.close_code == 4003 and "reported AuthFailed: bad signature" in (receiver.close_reason or "")


@pytest.mark.parametrize(
    ("receiver_role", "start", "msg", "match"),
    [
        (D, 0, AUTH, "a listener never sends peer_auth"),  # wrong direction
        (D, 1, handoff(), "a listener never sends handoff"),
        (L, 0, CHALLENGE, "a dialer never sends peer_challenge"),
        (L, 0, AUTH, "peer_auth is only legal in state AWAIT_AUTH"),  # wrong order
        (L, 0, handoff(), "handoff is only legal in state OPEN"),
        (L, 1, handoff(), "handoff is only legal in state OPEN"),
        (D, 1, CHALLENGE, "peer_challenge is only legal in state AWAIT_CHALLENGE"),
        (L, 2, AUTH, "peer_auth is only legal in state AWAIT_AUTH"),
        (L, 2, Error(code="StageFailed", message="x", step_id=3), "an error naming a step"),
    ],
)
def test_illegal_messages_close_the_link(receiver_role: PeerRole, start: int, msg: Message, match: str) -> None:
    pair = Pair()
    for m, s in [(CHALLENGE, pair.listener), (AUTH, pair.dialer)][:start]:
        pair.send(s, m)
    receiver = pair.listener if receiver_role is L else pair.dialer
    with pytest.raises(ProtocolViolation, match=match):
        receiver.receive(frame(msg))
    assert receiver.state is PeerState.CLOSED and receiver.close_code == 1008
    assert receiver.events() == []
    (error,) = receiver.data_to_send()
    told = decode_message(error)
    assert isinstance(told, Error) and told.code == "ProtocolViolation" and told.step_id is None


FOREIGN = [m for m in every_message() if not isinstance(m, (Bye, Error, PeerChallenge, PeerAuth, Handoff))]


@pytest.mark.parametrize("msg", FOREIGN, ids=lambda m: m.KIND)
@pytest.mark.parametrize("role", [L, D])
def test_coordinator_messages_are_never_legal_on_a_direct_link(msg: Message, role: PeerRole) -> None:
    pair = Pair().open()
    conn = pair.listener if role is L else pair.dialer
    with pytest.raises(ProtocolViolation, match="belongs to the coordinator connection"):
        conn.receive(frame(msg))
    assert conn.state is PeerState.CLOSED
    fresh = PeerConnection(role)
    with pytest.raises(ProtocolViolation, match="belongs to the coordinator connection"):
        fresh.send(msg)
    assert fresh.state is PeerState.AWAIT_CHALLENGE and fresh.data_to_send() == []


@pytest.mark.parametrize("data", [b"", b"garbage", b"BFLY\x01\xff\xff\xff\xff", b"\x00" * 64])
def test_garbage_bytes_close_the_link(data: bytes) -> None:
    conn = PeerConnection(L)
    with pytest.raises(ProtocolViolation):
        conn.receive(data)
    assert conn.state is PeerState.CLOSED and conn.close_code in (1008, 1009, 4001)
    assert len(conn.data_to_send()) == 1


def test_an_oversized_frame_closes_with_1009() -> None:
    small = PeerConnection(L, limits=Limits(max_frame_bytes=1024))
    with pytest.raises(ProtocolViolation):
        small.receive(frame(Handoff(step_id=1, session_id="s", start_pos=0, x=torch.zeros(1, 64, 64))))
    assert small.state is PeerState.CLOSED and small.close_code == 1009


def test_illegal_sends_raise_and_change_nothing() -> None:
    dialer = PeerConnection(D)
    for msg in (CHALLENGE, AUTH, handoff()):
        with pytest.raises(ProtocolViolation):
            dialer.send(msg)
    assert dialer.state is PeerState.AWAIT_CHALLENGE and dialer.data_to_send() == []
    listener = PeerConnection(L)
    with pytest.raises(ProtocolViolation, match="a listener never sends handoff"):
        listener.send(handoff())
    assert listener.state is PeerState.AWAIT_CHALLENGE and listener.data_to_send() == []


def test_data_after_close_is_discarded_and_sends_are_refused() -> None:
    pair = Pair().open()
    pair.send(pair.dialer, Bye(reason="done"))
    pair.listener.receive(frame(handoff()))
    pair.listener.receive(b"garbage")
    assert pair.listener.events() == [] and pair.listener.data_to_send() == []
    with pytest.raises(ProtocolViolation, match="closed"):
        pair.dialer.send(handoff())


def test_fail_is_idempotent_and_the_close_reason_fits_a_close_frame() -> None:
    conn = PeerConnection(L)
    conn.fail(AuthFailed("ü" * 500, hint="x"))
    conn.fail(AuthFailed("second"))
    assert conn.state is PeerState.CLOSED and conn.close_code == 4003
    assert len((conn.close_reason or "").encode()) <= MAX_CLOSE_REASON_BYTES
    (error,) = conn.data_to_send()
    told = decode_message(error)
    assert isinstance(told, Error) and told.code == "AuthFailed"


START = {"fresh": 0, "challenged": 1, "open": 2}


def _at(role: PeerRole, start: str) -> PeerConnection:
    pair = Pair()
    for m, s in [(CHALLENGE, pair.listener), (AUTH, pair.dialer)][: START[start]]:
        pair.send(s, m)
    return pair.listener if role is L else pair.dialer


@FUZZ
@given(st.sampled_from([L, D]), st.sampled_from(sorted(START)), st.lists(st.binary(max_size=200), max_size=4))
def test_random_bytes_only_ever_raise_protocol_violation(role: PeerRole, start: str, chunks: list[bytes]) -> None:
    conn = _at(role, start)
    for chunk in chunks:
        try:
            conn.receive(chunk)
        except ProtocolViolation:
            assert conn.state is PeerState.CLOSED


ALL = [CHALLENGE, AUTH, handoff(), Bye(reason="x"), Error(code="AuthFailed", message="no"), *FOREIGN]


@FUZZ
@given(st.sampled_from([L, D]), st.sampled_from(sorted(START)),
       st.lists(st.integers(0, len(ALL) - 1), max_size=8), st.data())
def test_random_valid_and_mutated_frames_only_ever_raise_protocol_violation(
    role: PeerRole, start: str, picks: list[int], data: st.DataObject
) -> None:
    conn = _at(role, start)
    for pick in picks:
        raw = bytearray(frame(ALL[pick]))
        if data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        was_closed = conn.state is PeerState.CLOSED
        try:
            conn.receive(bytes(raw))
        except ProtocolViolation:
            assert conn.state is PeerState.CLOSED and conn.close_code is not None
        seen, queued = conn.events(), conn.data_to_send()
        if was_closed:
            assert seen == [] and queued == []
