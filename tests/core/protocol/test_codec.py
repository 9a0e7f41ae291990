"""Activation codecs: exact bookkeeping, error bounds per codec, and refusal of malformed payloads."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, ProtocolViolation
from core.protocol.codec import CODECS, INT8_LEVELS, MAX_SCALE, EncodedTensor, check_payload, decode, encode
from core.protocol.frames import decode_frame, encode_frame
from core.protocol.messages import Forward, Result, decode_message, parse_message


def hidden(rows: int = 4, width: int = 576, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, width, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 576), (3, 576), (2, 3, 8), (7,)])
def test_decode_restores_shape_and_dtype(codec: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape).to(dtype)
    back = decode(encode(x, codec))
    assert back.shape == x.shape and back.dtype == dtype


def test_model_codec_is_the_tensor_itself() -> None:
    x = hidden()
    enc = encode(x, "model")
    assert enc.codec == "model" and enc.data is x and enc.scales is None
    assert torch.equal(decode(enc), x)


@pytest.mark.parametrize("codec", CODECS)
def test_token_ids_travel_unchanged_under_every_codec(codec: str) -> None:
    ids = torch.tensor([0, 17, 49151], dtype=torch.int64)
    enc = encode(ids, codec)
    assert enc.data is ids and enc.scales is None
    assert torch.equal(decode(enc, dtype=torch.float32), ids)


@pytest.mark.parametrize(("codec", "wire", "relative"), [("float16", torch.float16, 2**-11), ("bfloat16", torch.bfloat16, 2**-8)])
def test_sixteen_bit_codecs_round_to_nearest(codec: str, wire: torch.dtype, relative: float) -> None:
    x = hidden()
    enc = encode(x, codec)
    assert enc.data.dtype == wire and enc.nbytes == x.numel() * 2
    err = (decode(enc) - x).abs()
    assert bool((err <= x.abs() * relative + 1e-7).all()), float((err / x.abs()).max())
    assert float(err.max()) > 0  # it did round


def test_int8_error_is_at_most_half_a_step_of_each_row() -> None:
    x = hidden(rows=5)
    x[2] *= 1000.0  # an outlier row must not coarsen the others
    enc = encode(x, "int8")
    assert enc.codec == "int8" and enc.data.dtype == torch.int8
    assert enc.scales is not None and enc.scales.shape == (5, 1) and enc.scales.dtype == torch.float32
    assert enc.nbytes == x.numel() + 5 * 4
    step = x.abs().amax(dim=-1, keepdim=True) / INT8_LEVELS
    err = (decode(enc) - x).abs()
    assert bool((err <= step * (0.5 + 1e-5)).all())
    assert float(err[0].max()) < 3 * 4 / INT8_LEVELS  # row 0 keeps its own fine step
    assert int(enc.data.abs().max()) == INT8_LEVELS  # each row's absmax maps to ±127


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    width=st.integers(1, 40),
    magnitude=st.floats(1e-6, 1e6),
    seed=st.integers(0, 2**16),
)
def test_int8_round_trip_bound_holds_for_any_rows(rows: int, width: int, magnitude: float, seed: int) -> None:
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * magnitude
    enc = encode(x, "int8")
    check_payload(enc.codec, enc.data, enc.scales)
    step = x.abs().amax(dim=-1, keepdim=True) / INT8_LEVELS
    assert bool(((decode(enc) - x).abs() <= step * (0.5 + 1e-5) + 1e-30).all())


def test_int8_zero_rows_stay_zero() -> None:
    x = torch.zeros(2, 8)
    x[1, 3] = 2.0
    enc = encode(x, "int8")
    assert float(enc.scales[0, 0]) == 0.0  # type: ignore[index]
    assert torch.equal(decode(enc), x)


def test_values_beyond_float16_travel_uncompressed() -> None:
    x = hidden()
    x[0, 0] = 1e5
    enc = encode(x, "float16")
    assert enc.codec == "model" and enc.data is x


def test_non_finite_input_is_not_compressed() -> None:
    x = hidden()
    x[1, 1] = math.nan
    assert encode(x, "int8").codec == "model"
    assert encode(x, "bfloat16").codec == "model"


def test_unknown_codec_is_refused_when_encoding() -> None:
    with pytest.raises(ConfigError, match="unknown activation codec 'zstd'"):
        encode(hidden(), "zstd")


def test_decode_into_the_receivers_compute_dtype() -> None:
    enc = encode(hidden(), "float16")
    assert decode(enc, dtype=torch.bfloat16).dtype == torch.bfloat16
    received = EncodedTensor("int8", *_int8_payload(), dtype=torch.bfloat16)
    assert decode(received).dtype == torch.bfloat16


def _int8_payload() -> tuple[torch.Tensor, torch.Tensor]:
    enc = encode(hidden(rows=2, width=8), "int8")
    assert enc.scales is not None
    return enc.data, enc.scales


@pytest.mark.parametrize(
    ("codec", "data", "scales", "match"),
    [
        ("gzip", torch.zeros(1, 4), None, "unknown activation codec 'gzip'"),
        ("float16", torch.zeros(1, 4), None, "codec float16 carries float16 activations, got float32"),
        ("bfloat16", torch.zeros(1, 4, dtype=torch.float16), None, "codec bfloat16 carries bfloat16"),
        ("model", torch.zeros(1, 4, dtype=torch.int8), None, "codec model carries"),
        ("model", torch.zeros(1, 4), torch.zeros(1, 1), "codec model carries no scales"),
        ("int8", torch.zeros(1, 4), torch.zeros(1, 1), "codec int8 carries int8 activations, got float32"),
        ("int8", torch.zeros(1, 4, dtype=torch.int8), None, "need their per-row scales"),
        ("int8", torch.zeros(2, 4, dtype=torch.int8), torch.zeros(1, 1), r"shape \[2, 1\], got float32 \[1, 1\]"),
        ("int8", torch.zeros(2, 4, dtype=torch.int8), torch.zeros(2, 1, dtype=torch.float16), "must be float32"),
        ("int8", torch.zeros(2, 4, dtype=torch.int8), torch.tensor([[0.1], [-0.1]]), "finite and in"),
        ("int8", torch.zeros(2, 4, dtype=torch.int8), torch.tensor([[0.1], [math.inf]]), "finite and in"),
        ("int8", torch.zeros(2, 4, dtype=torch.int8), torch.tensor([[0.1], [math.nan]]), "finite and in"),
        ("int8", torch.zeros(2, 4, dtype=torch.int8), torch.tensor([[0.1], [MAX_SCALE * 2]]), "finite and in"),
        ("int8", torch.full((2, 4), -128, dtype=torch.int8), torch.ones(2, 1), r"lie in \[-127, 127\]"),
        ("int8", torch.tensor(3, dtype=torch.int8), torch.ones(1), "at least one dimension"),
        ("float16", torch.tensor([1, 2]), torch.ones(1), "token ids travel without scales"),
    ],
)
def test_malformed_payloads_are_refused(codec: str, data: torch.Tensor, scales: torch.Tensor | None, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        check_payload(codec, data, scales)
    with pytest.raises(ProtocolViolation, match=match):
        decode(EncodedTensor(codec, data, scales))


@pytest.mark.parametrize("codec", CODECS)
def test_forward_and_result_carry_each_codec_through_a_frame(codec: str) -> None:
    x = hidden(rows=3)
    enc = encode(x, codec)
    fwd = Forward(step_id=1, session_id="s", assignment_id="a", start_pos=4, x=enc.data, codec=enc.codec,
                  scales=enc.scales, logits_codec="float16")
    back = decode_message(fwd.to_frame())
    assert isinstance(back, Forward) and back.codec == codec and back.logits_codec == "float16"
    assert torch.equal(decode(EncodedTensor(back.codec, back.x, back.scales)), decode(enc))
    res = Result(step_id=1, session_id="s", compute_s=0.5, y=enc.data, codec=enc.codec, scales=enc.scales, batch=7)
    got = decode_message(res.to_frame())
    assert isinstance(got, Result) and got.batch == 7 and got.codec == codec
    assert torch.equal(decode(EncodedTensor(got.codec, got.y, got.scales)), decode(enc))


def test_defaults_are_left_out_so_older_peers_still_parse_the_frame() -> None:
    frame = decode_frame(Forward(step_id=1, session_id="s", assignment_id="a", start_pos=0, x=hidden()).to_frame())
    assert set(frame.header) == {"step_id", "session_id", "assignment_id", "start_pos"} and set(frame.tensors) == {"x"}
    frame = decode_frame(Result(step_id=1, session_id="s", compute_s=0.1, y=hidden()).to_frame())
    assert set(frame.header) == {"step_id", "session_id", "compute_s"}
    back = parse_message(frame)
    assert isinstance(back, Result) and back.codec == "model" and back.scales is None and back.batch == 1


@pytest.mark.parametrize(
    ("header", "tensors", "match"),
    [
        ({"codec": "int8"}, {"x": torch.zeros(2, 4)}, "x does not fit its codec"),
        ({"codec": "int8"}, {"x": torch.zeros(2, 4, dtype=torch.int8)}, "need their per-row scales"),
        ({}, {"x": torch.zeros(2, 4), "scales": torch.ones(2, 1)}, "codec model carries no scales"),
        ({"codec": "lz4"}, {"x": torch.zeros(2, 4)}, "codec must be one of"),
        ({"codec": "int8"}, {"x": torch.zeros(2, 4, dtype=torch.int8), "scales": torch.ones(3, 1)}, r"shape \[2, 1\]"),
        ({"codec": "int8"}, {"x": torch.full((2, 4), -128, dtype=torch.int8), "scales": torch.ones(2, 1)}, r"\[-127, 127\]"),
        ({"logits_codec": 5}, {"x": torch.zeros(2, 4)}, "logits_codec must be one of"),
    ],
)
def test_received_forward_frames_with_bad_codecs_are_refused(header: dict, tensors: dict, match: str) -> None:
    base = {"step_id": 1, "session_id": "s", "assignment_id": "a", "start_pos": 0}
    with pytest.raises(ProtocolViolation, match=match):
        parse_message(decode_frame(encode_frame("forward", {**base, **header}, tensors)))


def test_result_batch_size_is_bounded() -> None:
    with pytest.raises(ProtocolViolation, match="batch must be an integer from 1"):
        Result(step_id=1, session_id="s", compute_s=0.1, y=hidden(), batch=0)
