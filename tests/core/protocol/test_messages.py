"""Messages: every kind round-trips; every field is checked, by construction and on arrival."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from core import errors
from core.errors import AuthFailed, ButterflyError, InsufficientCapacity, PoolUnavailable, ProtocolViolation
from core.protocol.frames import Frame, Limits, decode_frame, encode_frame
from core.protocol.messages import (
    MAX_CHUNK_BYTES,
    Accepted,
    Assign,
    Error,
    FetchTensor,
    Forward,
    Heartbeat,
    Hello,
    LoadProgress,
    Message,
    Result,
    SetSlowdown,
    TensorChunk,
    TensorSpec,
    decode_message,
    message_kinds,
    parse_message,
)
from core.types import LayerRange

from tests.core.protocol.samples import PROFILE, SHA, assign, every_message, forward, hello, same


def test_the_samples_cover_every_message_kind() -> None:
    assert {m.KIND for m in every_message()} == set(message_kinds())


@pytest.mark.parametrize("msg", every_message(), ids=lambda m: m.KIND)
def test_every_message_round_trips(msg: Message) -> None:
    back = decode_message(msg.to_frame())
    assert same(back, msg)
    assert same(type(msg).from_frame(decode_frame(msg.to_frame())), msg)


def test_hardware_profile_round_trips_including_unknown_bandwidth() -> None:
    assert PROFILE.bandwidth_bytes_per_s == math.inf
    back = decode_message(hello().to_frame())
    assert isinstance(back, Hello) and back.profile == PROFILE


def test_a_maximal_weight_chunk_fits_the_default_frame_limit() -> None:
    chunk = TensorChunk(assignment_id="a", name="w", offset=0, total=MAX_CHUNK_BYTES,
                        data=torch.zeros(MAX_CHUNK_BYTES, dtype=torch.uint8))
    back = decode_message(chunk.to_frame())
    assert isinstance(back, TensorChunk) and back.data.numel() == MAX_CHUNK_BYTES


def bad_spec(**changes: Any) -> TensorSpec:
    return dataclasses.replace(TensorSpec("w", "F32", (2, 3), 24, SHA), **changes)


def tensors_of(*specs: TensorSpec) -> tuple[TensorSpec, ...]:
    return specs


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: hello(node_public_key=b"\x00" * 31), r"hello message: node_public_key must be exactly 32 bytes"),
        (lambda: hello(client_nonce="x" * 32), r"client_nonce must be exactly 32 bytes"),
        (lambda: hello(name="n" * 257), r"hello message: name must be a string of 0 to 256"),
        (lambda: hello(name=None), r"hello message: name must be a string"),
        (lambda: hello(invite="i" * 4097), r"invite must be a string of 0 to 4096 characters or null"),
        (lambda: hello(os="\ud800"), r"os contains characters that are not valid Unicode"),
        (lambda: hello(protocol_version=True), r"protocol_version must be an integer"),
        (lambda: hello(profile="cpu"), r"profile must be a HardwareProfile"),
        (lambda: hello(profile=dataclasses.replace(PROFILE, memory_bytes=-1)), r"profile.memory_bytes"),
        (lambda: hello(profile=dataclasses.replace(PROFILE, seconds_per_layer=math.nan)),
         r"profile.seconds_per_layer must be a finite number"),
        (lambda: hello(profile=dataclasses.replace(PROFILE, bandwidth_bytes_per_s=-math.inf)),
         r"profile.bandwidth_bytes_per_s"),
        (lambda: Accepted(node_id="", heartbeat_interval_s=1.0), r"accepted message: node_id"),
        (lambda: Accepted(node_id="n", heartbeat_interval_s=math.inf), r"heartbeat_interval_s must be a finite"),
        (lambda: Accepted(node_id="n", heartbeat_interval_s=0.0), r"heartbeat_interval_s"),
        (lambda: assign(dtype="float64"), r"assign message: dtype must be one of bfloat16, float16, float32"),
        (lambda: assign(max_tokens=0), r"max_tokens must be an integer from 1"),
        (lambda: assign(layers=(0, 3, 30)), r"layers must be a LayerRange"),
        (lambda: assign(hf_config=[1]), r"hf_config must be a JSON object"),
        (lambda: assign(hf_config={"x": float("nan")}), r"hf_config must be plain JSON"),
        (lambda: assign(hf_config={"x": "y" * 40000}), r"hf_config is \d+ bytes of JSON, the limit is 32768"),
        (lambda: assign(tensors=tensors_of(bad_spec(sha256=SHA.upper()))), r"tensors\[0\].sha256 must be 64"),
        (lambda: assign(tensors=tensors_of(bad_spec(nbytes=-1))), r"tensors\[0\].nbytes"),
        (lambda: assign(tensors=tensors_of(bad_spec(shape=[2, 3]))), r"tensors\[0\].shape must be a tuple"),
        (lambda: assign(tensors=tensors_of(bad_spec(), bad_spec())), r"tensors\[1\].name repeats tensor 'w'"),
        (lambda: assign(tensors=("w",)), r"tensors\[0\] must be a TensorSpec"),
        (lambda: assign(assignment_id=""), r"assignment_id must be a string of 1 to 128"),
        (lambda: FetchTensor(assignment_id="a", name="w", offset=0, length=MAX_CHUNK_BYTES + 1), r"length"),
        (lambda: FetchTensor(assignment_id="a", name="w", offset=-1, length=1), r"offset"),
        (lambda: TensorChunk(assignment_id="a", name="w", offset=10, total=12, data=torch.zeros(3, dtype=torch.uint8)),
         r"tensor_chunk message: data bytes \[10, 13\) overrun the tensor's 12 bytes"),
        (lambda: TensorChunk(assignment_id="a", name="w", offset=0, total=12, data=torch.zeros(3, dtype=torch.int8)),
         r"data has dtype int8; allowed: uint8"),
        (lambda: TensorChunk(assignment_id="a", name="w", offset=0, total=99, data=torch.zeros(3, 3, dtype=torch.uint8)),
         r"data must have 1 to 1 dimensions"),
        (lambda: LoadProgress(assignment_id="a", done_bytes=5, total_bytes=4), r"done_bytes \(5\) exceeds"),
        (lambda: Forward(step_id=-1, session_id="s", assignment_id="a", start_pos=0, x=torch.zeros(1, 2)),
         r"forward message: step_id must be an integer from 0"),
        (lambda: Forward(step_id=1.0, session_id="s", assignment_id="a", start_pos=0, x=torch.zeros(1, 2)),
         r"step_id must be an integer"),
        (lambda: Forward(step_id=1, session_id="s", assignment_id="a", start_pos=2**40, x=torch.zeros(1, 2)),
         r"start_pos"),
        (lambda: Forward(step_id=1, session_id="s", assignment_id="a", start_pos=0, x=torch.zeros(1, 2).double()),
         r"x has dtype float64"),
        (lambda: Forward(step_id=1, session_id="s", assignment_id="a", start_pos=0, x=torch.tensor(1.0)),
         r"x must have 1 to 4 dimensions"),
        (lambda: Forward(step_id=1, session_id="s", assignment_id="a", start_pos=0, x=[1.0]), r"x must be a tensor"),
        (lambda: Result(step_id=1, session_id="s", compute_s=-0.1, y=torch.zeros(1, 2)), r"compute_s"),
        (lambda: Heartbeat(seq=1, sent_at=math.nan), r"heartbeat message: sent_at must be a finite number"),
        (lambda: SetSlowdown(factor=0.5), r"set_slowdown message: factor"),
        (lambda: Error(code="", message="m"), r"error message: code"),
        (lambda: Error(code="X", message="m", step_id=-3), r"error message: step_id"),
    ],
)
def test_invalid_fields_are_refused_naming_the_field(make: Any, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        make()


def test_lists_are_normalized_to_tuples_and_messages_are_frozen() -> None:
    msg = assign(tensors=[TensorSpec("w", "F32", (1,), 4, SHA)])
    assert isinstance(msg.tensors, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.max_tokens = 5  # type: ignore[misc]


def tampered(msg: Message, **header_changes: Any) -> Frame:
    """``msg``'s frame with header fields replaced (None value: field removed)."""
    frame = decode_frame(msg.to_frame())
    header = {k: v for k, v in {**frame.header, **header_changes}.items() if v is not None}
    return decode_frame(encode_frame(frame.kind, header, frame.tensors))


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (lambda: tampered(hello(), name=None), r"hello message: missing field 'name'"),
        (lambda: tampered(hello(), admin=True), r"hello message: unexpected field 'admin'"),
        (lambda: tampered(hello(), node_public_key="AAAA"), r"node_public_key must be 32 bytes as base64"),
        (lambda: tampered(hello(), node_public_key="!" * 44), r"node_public_key is not valid base64"),
        (lambda: tampered(hello(), node_public_key=12), r"node_public_key must be 32 bytes as base64"),
        (lambda: tampered(hello(), profile={"node_id": "x"}), r"profile must be an object with exactly the fields"),
        (lambda: tampered(hello(), protocol_version="1"), r"protocol_version must be an integer"),
        (lambda: tampered(forward(), step_id=2.5), r"forward message: step_id must be an integer"),
        (lambda: tampered(forward(), session_id=["s"]), r"session_id must be a string"),
        (lambda: tampered(assign(), layers=[5, 3, 30]), r"layers is not a valid layer range"),
        (lambda: tampered(assign(), layers=[0, 3]), r"layers must be \[start, end, total\]"),
        (lambda: tampered(assign(), tensor_specs=[["w", "F32", [1], 4]]), r"tensors\[0\] must be \[name, dtype, shape"),
        (lambda: tampered(assign(), tensor_specs=[["w", "F32", [1], 4, "ab"]]), r"tensors\[0\].sha256"),
        (lambda: tampered(assign(), tensor_specs=[["w", "F32", [True], 4, SHA]]), r"tensors\[0\].shape"),
        (lambda: tampered(Accepted(node_id="n", heartbeat_interval_s=1.0), heartbeat_interval_s="1"),
         r"heartbeat_interval_s must be a finite number"),
        (lambda: decode_frame(encode_frame("forward", decode_frame(forward().to_frame()).header, {})),
         r"forward message: missing tensor 'x'"),
        (lambda: decode_frame(encode_frame("forward", decode_frame(forward().to_frame()).header,
                                           {"x": torch.zeros(1, 2), "z": torch.zeros(1)})),
         r"forward message: unexpected tensor 'z'"),
        (lambda: decode_frame(encode_frame("teleport", {})), r"unknown message kind 'teleport'"),
    ],
)
def test_received_frames_are_checked_strictly(frame: Any, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        parse_message(frame())


def test_whole_number_floats_from_json_are_accepted_as_floats() -> None:
    back = parse_message(tampered(Heartbeat(seq=1, sent_at=2.0), sent_at=2))
    assert isinstance(back, Heartbeat) and back.sent_at == 2.0 and type(back.sent_at) is float


def test_from_frame_refuses_a_frame_of_another_kind() -> None:
    with pytest.raises(ProtocolViolation, match="expected a forward message, got 'hello'"):
        Forward.from_frame(decode_frame(hello().to_frame()))


def test_non_finite_activations_are_refused_on_arrival() -> None:
    x = torch.zeros(1, 2, 8)
    x[0, 1, 3] = math.nan
    data = Forward(step_id=1, session_id="s", assignment_id="a", start_pos=0, x=x).to_frame()
    with pytest.raises(ProtocolViolation, match="tensor 'x' contains NaN"):
        decode_message(data)
    assert isinstance(decode_message(data, Limits(allow_nonfinite=True)), Forward)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (AuthFailed("invite expired", hint="ask the host"), AuthFailed),
        (ProtocolViolation("bad"), ProtocolViolation),
        (InsufficientCapacity("too small", missing_bytes=5), PoolUnavailable),
        (errors.StageFailed("cache too short"), errors.StageFailed),
    ],
)
def test_errors_travel_as_their_class(exc: ButterflyError, expected: type[ButterflyError]) -> None:
    msg = decode_message(Error.from_exception(exc, step_id=3).to_frame())
    assert isinstance(msg, Error) and msg.code == type(exc).__name__ and msg.step_id == 3
    back = msg.to_exception()
    assert type(back) is expected
    assert back.message == f"peer reported: {exc.message}" and back.hint == exc.hint


def test_unknown_error_codes_become_the_base_error() -> None:
    back = Error(code="SomethingNew", message="m").to_exception()
    assert type(back) is ButterflyError


def test_long_exception_texts_are_cut_to_their_bounds() -> None:
    msg = Error.from_exception(ProtocolViolation("x" * 10000, hint="h" * 10000))
    assert len(msg.message) == 4096 and msg.hint is not None and len(msg.hint) == 4096


def test_layer_ranges_keep_their_meaning() -> None:
    back = decode_message(assign(layers=LayerRange(29, 30, 30)).to_frame())
    assert isinstance(back, Assign) and back.layers.is_last and not back.layers.is_first
