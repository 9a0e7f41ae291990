"""Frames: exact round trips, and every malformed or oversized input refused cleanly."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import FrameTooLarge, ProtocolViolation, VersionMismatch
from core.protocol import frames
from core.protocol.frames import DTYPES, MAGIC, PROTOCOL_VERSION, Limits, decode_frame, encode_frame

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raw_frame(header: object, body: bytes = b"", *, version: int = PROTOCOL_VERSION,
              header_len: int | None = None) -> bytes:
    """A frame assembled by hand, so tests can declare anything the encoder would refuse."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    return MAGIC + bytes([version]) + struct.pack("<I", length) + text + body


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (1, 576), (2, 3, 4), (1, 2, 0, 3)])
def test_every_dtype_and_shape_round_trips_bit_exactly(dtype_name: str, shape: tuple[int, ...]) -> None:
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        t = (torch.randn(shape, generator=gen) * 1000).to(dtype)
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(info.min, info.max, shape, generator=gen, dtype=dtype)
    frame = decode_frame(encode_frame("forward", {"step_id": 3}, {"x": t}))
    got = frame.tensors["x"]
    assert (frame.kind, dict(frame.header)) == ("forward", {"step_id": 3})
    assert got.dtype == dtype and got.shape == t.shape and bits(got) == bits(t)


def test_bf16_extremes_and_negative_zero_are_exact() -> None:
    t = torch.tensor([0.0, -0.0, 3.3895e38, -3.3895e38, 1e-40, 1.0 / 3.0], dtype=torch.bfloat16)
    got = decode_frame(encode_frame("k", {}, {"t": t})).tensors["t"]
    assert bits(got) == bits(t)


def test_int64_extremes_are_exact() -> None:
    t = torch.tensor([-(2**63), 2**63 - 1, 0, -1], dtype=torch.int64)
    assert torch.equal(decode_frame(encode_frame("k", {}, {"t": t})).tensors["t"], t)


def test_several_tensors_keep_order_names_and_header_fields() -> None:
    a, b = torch.arange(6, dtype=torch.int32).reshape(2, 3), torch.ones(4, dtype=torch.float16)
    header = {"n": 1, "s": "ünï", "nested": {"l": [1, 2.5, None, True]}}
    frame = decode_frame(encode_frame("multi", header, {"b": b, "a": a}))
    assert list(frame.tensors) == ["b", "a"]
    assert torch.equal(frame.tensors["a"], a) and torch.equal(frame.tensors["b"], b)
    assert frame.header == header


def test_non_contiguous_and_grad_tensors_are_sent_as_their_values() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    leaf = torch.ones(2, 2, requires_grad=True)
    frame = decode_frame(encode_frame("k", {}, {"t": base.t(), "g": leaf * 2}))
    assert torch.equal(frame.tensors["t"], base.t())
    assert torch.equal(frame.tensors["g"], torch.full((2, 2), 2.0))


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decoded_tensors_own_writable_memory(wrap: type) -> None:
    t = torch.arange(8, dtype=torch.float32)
    buf = bytearray(encode_frame("k", {}, {"t": t}))
    got = decode_frame(wrap(buf)).tensors["t"]
    buf[-4:] = b"\xff" * 4  # the received buffer is reused by the I/O layer
    got += 1  # and the tensor can be written
    assert torch.equal(got, t + 1)


@pytest.mark.parametrize(
    ("header", "tensors", "match"),
    [
        ({"kind": "x"}, None, "reserved keys"),
        ({"tensors": []}, None, "reserved keys"),
        ({}, {"t": torch.zeros(2, dtype=torch.float64)}, "float64"),
        ({}, {"t": torch.zeros(2, dtype=torch.bool)}, "bool"),
        ({"v": {1, 2}}, None, "cannot encode"),
        ({"v": float("nan")}, None, "cannot encode"),
    ],
)
def test_encode_refuses_what_cannot_be_sent(header: dict, tensors: dict | None, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        encode_frame("k", header, tensors)


GOOD_SPEC = {"name": "x", "dtype": "float32", "shape": [2]}
GOOD_BODY = struct.pack("<2f", 1.0, 2.0)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", ProtocolViolation, "truncated frame: 0 bytes"),
        (b"BFLY\x01\x00", ProtocolViolation, "truncated frame"),
        (b"HTTP/1.1 200 OK\r\n", ProtocolViolation, "not a Butterfly frame"),
        (raw_frame({"kind": "k", "tensors": []}, version=PROTOCOL_VERSION + 1), VersionMismatch, f"protocol version {PROTOCOL_VERSION + 1}"),
        (raw_frame({"kind": "k", "tensors": []}, header_len=2 * 10**6), FrameTooLarge, "header of 2000000 bytes"),
        (raw_frame({"kind": "k", "tensors": []}, header_len=1000), ProtocolViolation, "header declares 1000"),
        (raw_frame(b"\xff\xfe{}"), ProtocolViolation, "not valid UTF-8"),
        (raw_frame(b"{\"kind\": "), ProtocolViolation, "not valid JSON"),
        (raw_frame([1, 2]), ProtocolViolation, "must be a JSON object, got list"),
        (raw_frame(b'{"kind":"a","kind":"b","tensors":[]}'), ProtocolViolation, "duplicate key 'kind'"),
        (raw_frame(b'{"kind":"a","v":NaN,"tensors":[]}'), ProtocolViolation, "NaN is not allowed"),
        (raw_frame(b"[" * 30000 + b"]" * 30000), ProtocolViolation, "nested too deeply"),
        (raw_frame({"tensors": []}), ProtocolViolation, "needs 'kind'"),
        (raw_frame({"kind": 5, "tensors": []}), ProtocolViolation, "needs 'kind'"),
        (raw_frame({"kind": "k" * 65, "tensors": []}), ProtocolViolation, "needs 'kind'"),
        (raw_frame({"kind": "k"}), ProtocolViolation, "needs 'tensors'"),
        (raw_frame({"kind": "k", "tensors": {}}), ProtocolViolation, "needs 'tensors'"),
        (raw_frame({"kind": "k", "tensors": [GOOD_SPEC] * 5}), FrameTooLarge, "5 tensors, the limit is 4"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "extra": 1}]}), ProtocolViolation, "exactly 'name'"),
        (raw_frame({"kind": "k", "tensors": [GOOD_SPEC, GOOD_SPEC]}, GOOD_BODY * 2), ProtocolViolation,
         "appears twice"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "name": ""}]}), ProtocolViolation, "name must be"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "dtype": "float64"}]}), ProtocolViolation,
         "dtype 'float64'"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "dtype": "torch.float32"}]}), ProtocolViolation,
         "dtype"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "shape": [1, 1, 1, 1, 2]}]}), FrameTooLarge,
         "5 dimensions"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "shape": [-2]}]}), ProtocolViolation, "dimension -2"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "shape": [True, 2]}]}), ProtocolViolation,
         "dimension True"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "shape": [2.0]}]}), ProtocolViolation, "dimension 2.0"),
        (raw_frame({"kind": "k", "tensors": [{**GOOD_SPEC, "shape": "2"}]}), ProtocolViolation, "list of integers"),
        (raw_frame({"kind": "k", "tensors": [GOOD_SPEC]}, GOOD_BODY + b"\x00"), ProtocolViolation,
         "declare 8 bytes but 9 bytes follow"),
        (raw_frame({"kind": "k", "tensors": [GOOD_SPEC]}, GOOD_BODY[:-1]), ProtocolViolation,
         "declare 8 bytes but 7 bytes follow"),
        (raw_frame({"kind": "k", "tensors": []}, b"junk"), ProtocolViolation, "declare 0 bytes but 4"),
    ],
)
def test_malformed_frames_are_refused_with_a_precise_message(data: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        decode_frame(data)


@pytest.mark.parametrize(
    "shape", [[10**12], [10**6, 10**6], [2**31, 2**31, 2**31, 2**31], [0, 10**12], [10**4000]]
)
def test_huge_declared_shapes_are_refused_before_allocating(
    shape: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_allocation(*args: object) -> None:
        raise AssertionError("tensor memory was allocated for a refused frame")

    monkeypatch.setattr(frames, "_build_tensors", no_allocation)
    data = raw_frame({"kind": "k", "tensors": [{"name": "x", "dtype": "float32", "shape": shape}]}, b"\x00" * 64)
    with pytest.raises(ProtocolViolation, match="tensor 'x'|not valid JSON"):
        decode_frame(data)


def test_frame_size_limits_are_enforced_before_parsing() -> None:
    data = encode_frame("k", {"pad": "x" * 200}, {"t": torch.zeros(1000)})
    with pytest.raises(FrameTooLarge, match=f"frame of {len(data)} bytes exceeds the limit of 1000"):
        decode_frame(data, Limits(max_frame_bytes=1000))
    with pytest.raises(FrameTooLarge, match="limit of 100 bytes"):
        decode_frame(data, Limits(max_header_bytes=100))
    with pytest.raises(FrameTooLarge, match="1 dimensions, the limit is 0"):
        decode_frame(data, Limits(max_dims=0))
    with pytest.raises(FrameTooLarge, match="1 tensors, the limit is 0"):
        decode_frame(data, Limits(max_tensors=0))


def test_limits_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Limits(1024)  # type: ignore[misc]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_unless_allowed(dtype: torch.dtype, bad: float) -> None:
    t = torch.ones(1, 576, dtype=dtype)
    t[0, 300] = bad
    data = encode_frame("result", {}, {"y": t})
    with pytest.raises(ProtocolViolation, match="tensor 'y' contains NaN or infinite values"):
        decode_frame(data)
    got = decode_frame(data, Limits(allow_nonfinite=True)).tensors["y"]
    assert bits(got) == bits(t)


def test_large_finite_values_are_not_mistaken_for_infinity() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.tensor([torch.finfo(dtype).max, torch.finfo(dtype).min, torch.finfo(dtype).tiny], dtype=dtype)
        assert bits(decode_frame(encode_frame("k", {}, {"t": t})).tensors["t"]) == bits(t)


# --- fuzzing: only ProtocolViolation may escape, and nothing allocates past the input ---


def check_decode(data: bytes, limits: Limits = Limits()) -> None:
    try:
        frame = decode_frame(data, limits)
    except ProtocolViolation:
        return
    body = sum(t.numel() * t.element_size() for t in frame.tensors.values())
    assert body <= len(data) <= limits.max_frame_bytes


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_escape_as_anything_but_protocol_violation(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=256))
def test_random_bytes_after_a_valid_magic(version: int, header_len: int, rest: bytes) -> None:
    check_decode(MAGIC + bytes([version]) + struct.pack("<I", header_len) + rest)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
SPEC = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["x", "y"]), JSON),
        "dtype": st.one_of(st.sampled_from([*DTYPES, "float64", "bool"]), JSON),
        "shape": st.one_of(st.lists(st.integers(-3, 2**70), max_size=6), JSON),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.sampled_from(["forward", "result"]), JSON),
    st.one_of(st.lists(SPEC, max_size=6), JSON),
    st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    st.binary(max_size=128),
)
def test_random_headers_and_specs(kind: object, tensors: object, extra: dict, body: bytes) -> None:
    header = {**extra, "kind": kind, "tensors": tensors}
    check_decode(raw_frame(header, body), Limits(max_frame_bytes=4096))


def sample_frame() -> bytes:
    return encode_frame(
        "forward",
        {"step_id": 5, "session_id": "s"},
        {"x": torch.linspace(-2, 2, 24).reshape(2, 3, 4).bfloat16(), "ids": torch.arange(3)},
    )


@FUZZ
@given(st.data())
def test_mutated_valid_frames(data: st.DataObject) -> None:
    frame = bytearray(sample_frame())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        pos = data.draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del frame[pos : pos + data.draw(st.integers(1, 8))]
        else:
            frame[pos] = data.draw(st.integers(0, 255))
        if not frame:
            break
    check_decode(bytes(frame))


def test_every_truncation_of_a_valid_frame_is_refused() -> None:
    data = sample_frame()
    for cut in range(len(data)):
        with pytest.raises(ProtocolViolation):
            decode_frame(data[:cut])
