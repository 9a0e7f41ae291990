"""Activation bounds: what a stage may be fed and may answer, checked against its assignment."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.errors import ProtocolViolation
from core.model.config import ModelConfig
from core.model.shard import Shard
from core.model.weights import expected_shape, shard_tensor_names
from core.protocol.bounds import FLOAT_DTYPES, check_forward_input, check_result_output
from core.protocol.frames import DTYPES, Limits, decode_frame, encode_frame
from core.types import LayerRange

HIDDEN, VOCAB, MAX_TOKENS = 8, 50, 16
FIRST, MIDDLE, LAST, WHOLE = LayerRange(0, 2, 6), LayerRange(2, 4, 6), LayerRange(4, 6, 6), LayerRange(0, 6, 6)
NAN, INF = float("nan"), float("inf")


def forward(x: Any, layers: LayerRange = MIDDLE, start_pos: int = 0, **kw: Any) -> None:
    kw = {"hidden_size": HIDDEN, "vocab_size": VOCAB, "max_tokens": MAX_TOKENS, **kw}
    check_forward_input(x, layers=layers, start_pos=start_pos, **kw)


def result(y: Any, layers: LayerRange = MIDDLE, tokens: int = 3, **kw: Any) -> None:
    check_result_output(y, layers=layers, hidden_size=HIDDEN, vocab_size=VOCAB, tokens=tokens, **kw)


def hidden(t: int, dtype: torch.dtype = torch.float32, cols: int = HIDDEN) -> torch.Tensor:
    return torch.randn(t, cols).to(dtype)


def with_value(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[t.numel() // 2] = value
    return t


@pytest.mark.parametrize(
    ("x", "layers", "start_pos"),
    [
        (torch.tensor([0, 1, VOCAB - 1]), FIRST, 0),
        (torch.tensor([7]), FIRST, MAX_TOKENS - 1),  # the very last position of the context
        (torch.arange(MAX_TOKENS) % VOCAB, WHOLE, 0),  # a prompt that fills the context exactly
        (hidden(3), MIDDLE, 0),
        (hidden(1, torch.bfloat16), MIDDLE, 9),
        (hidden(2, torch.float16), LAST, 14),
        (torch.full((2, HIDDEN), 65504.0, dtype=torch.float16), LAST, 0),  # large but finite
    ],
)
def test_valid_inputs_pass(x: torch.Tensor, layers: LayerRange, start_pos: int) -> None:
    forward(x, layers, start_pos)


@pytest.mark.parametrize(
    ("x", "layers", "start_pos", "kw", "match"),
    [
        # the first stage takes int64 token ids [T] within the vocabulary
        (torch.tensor([1, 2], dtype=torch.int32), FIRST, 0, {}, "must be int64 token ids, got int32"),
        (hidden(2), FIRST, 0, {}, "must be int64 token ids, got float32"),
        (torch.tensor([[1, 2]]), FIRST, 0, {}, r"token ids of shape \[T\], got shape \[1, 2\]"),
        (torch.tensor(3), FIRST, 0, {}, r"token ids of shape \[T\], got shape \[\]"),
        (torch.tensor([1, VOCAB]), FIRST, 0, {}, rf"token ids from 1 to {VOCAB}; the vocabulary is \[0, {VOCAB}\)"),
        (torch.tensor([-1, 3]), FIRST, 0, {}, "token ids from -1 to 3"),
        (torch.tensor([2**62]), FIRST, 0, {}, "the vocabulary is"),
        (torch.zeros(0, dtype=torch.int64), FIRST, 0, {}, r"carries no tokens \(T = 0\)"),
        # later stages take float hidden states [T, hidden] of an allowed dtype, all finite
        (torch.tensor([1, 2, 3]), MIDDLE, 0, {}, "hidden states of dtype bfloat16, float16, float32, got int64"),
        (hidden(2).double(), MIDDLE, 0, {}, "got float64"),
        (hidden(2, torch.bfloat16), MIDDLE, 0, {"allowed_dtypes": {torch.float32}}, "dtype float32, got bfloat16"),
        (hidden(2, cols=HIDDEN + 1), MIDDLE, 0, {}, rf"shape \[T, hidden={HIDDEN}\], got shape \[2, {HIDDEN + 1}\]"),
        (hidden(2).unsqueeze(0), MIDDLE, 0, {}, r"got shape \[1, 2, 8\]"),
        (torch.randn(HIDDEN), LAST, 0, {}, r"got shape \[8\]"),
        (hidden(0), MIDDLE, 0, {}, "carries no tokens"),
        (with_value(hidden(3), NAN), MIDDLE, 0, {}, "NaN or infinite"),
        (with_value(hidden(3, torch.bfloat16), -INF), LAST, 0, {}, "NaN or infinite"),
        (with_value(hidden(3, torch.float16), INF), MIDDLE, 0, {}, "NaN or infinite"),
        # the tokens must fit the assignment's context from start_pos on
        (torch.arange(MAX_TOKENS + 1) % VOCAB, FIRST, 0, {}, f"carries {MAX_TOKENS + 1} tokens from position 0"),
        (hidden(3), MIDDLE, MAX_TOKENS - 2, {}, "leaves room for 2"),
        (hidden(1), MIDDLE, MAX_TOKENS, {}, f"starts at position {MAX_TOKENS}.*0 to {MAX_TOKENS - 1}"),
        (torch.tensor([1]), FIRST, -1, {}, "starts at position -1"),
        (hidden(1), MIDDLE, 2**31, {}, "starts at position 2147483648"),
        # not a tensor at all
        ([1, 2, 3], FIRST, 0, {}, "must be a tensor, got list"),
        (None, MIDDLE, 0, {}, "must be a tensor, got NoneType"),
    ],
)
def test_misfit_inputs_are_refused_saying_why(
    x: Any, layers: LayerRange, start_pos: int, kw: dict[str, Any], match: str
) -> None:
    with pytest.raises(ProtocolViolation, match=match) as info:
        forward(x, layers, start_pos, **kw)
    assert str(layers) in info.value.message and info.value.hint


def test_checks_do_not_modify_the_input() -> None:
    x = hidden(3)
    before = x.clone()
    forward(x)
    with pytest.raises(ProtocolViolation):
        forward(x, start_pos=MAX_TOKENS - 1)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("y", "layers", "tokens"),
    [
        (hidden(3), FIRST, 3),
        (hidden(3, torch.bfloat16), MIDDLE, 3),
        (hidden(1, torch.float16), MIDDLE, 1),
        (torch.randn(1, VOCAB), LAST, 3),  # the last token's logits
        (torch.randn(3, VOCAB), LAST, 3),  # every token's logits
        (torch.randn(1, VOCAB), WHOLE, 5),  # one stage holding the whole model ends in logits
    ],
)
def test_valid_outputs_pass(y: torch.Tensor, layers: LayerRange, tokens: int) -> None:
    result(y, layers, tokens)


@pytest.mark.parametrize(
    ("y", "layers", "tokens", "match"),
    [
        (hidden(2), MIDDLE, 3, "hidden states for 2 tokens; the step had 3"),
        (hidden(3, cols=HIDDEN * 2), FIRST, 3, rf"shape \[T, hidden={HIDDEN}\], got shape \[3, 16\]"),
        (torch.randn(1, VOCAB), MIDDLE, 1, rf"shape \[T, hidden={HIDDEN}\], got shape \[1, {VOCAB}\]"),
        (hidden(1), LAST, 1, rf"logits of shape \[T, vocab={VOCAB}\]"),
        (torch.randn(2, VOCAB), LAST, 3, "logits for 2 tokens; the step had 3 \\(expected 1 or 3\\)"),
        (torch.randn(VOCAB), LAST, 1, r"got shape \[50\]"),
        (torch.randint(0, VOCAB, (1, VOCAB)), LAST, 1, "logits of dtype bfloat16, float16, float32, got int64"),
        (with_value(torch.randn(1, VOCAB), NAN), LAST, 1, "NaN or infinite"),
        (with_value(hidden(3, torch.bfloat16), INF), MIDDLE, 3, "NaN or infinite"),
        ("logits", LAST, 1, "must be a tensor, got str"),
    ],
)
def test_misfit_outputs_are_refused_saying_why(y: Any, layers: LayerRange, tokens: int, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        result(y, layers, tokens)


def test_non_finite_values_reach_the_checks_when_frames_let_them_through() -> None:
    """With ``allow_nonfinite`` frames pass NaN on; the bounds still refuse it before compute."""
    x = with_value(hidden(2), NAN)
    data = encode_frame("forward", {}, {"x": x})
    (decoded,) = decode_frame(data, Limits(allow_nonfinite=True)).tensors.values()
    with pytest.raises(ProtocolViolation, match="NaN or infinite"):
        forward(decoded)


def test_every_allowed_float_dtype_can_travel_in_a_frame() -> None:
    assert FLOAT_DTYPES <= set(DTYPES.values())


# --- the bounds are the runtime's: what they pass, a real shard runs --------------------


def tiny_shard(layers: LayerRange) -> Shard:
    config = ModelConfig.from_hf(dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=16, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-5,
    ))
    generator = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(expected_shape(config, name), generator=generator) * 0.1
               for name in shard_tensor_names(config, layers)}
    return Shard(config, layers, tensors)


INPUTS = [
    torch.tensor([1, 2, 3]), torch.tensor([VOCAB]), torch.tensor([[1, 2]]), torch.tensor([1], dtype=torch.int32),
    torch.zeros(0, dtype=torch.int64), hidden(3), hidden(1, torch.bfloat16), hidden(2, torch.float16),
    hidden(2, cols=HIDDEN + 1), hidden(2).unsqueeze(0), torch.randn(HIDDEN), hidden(0), torch.tensor([[1, 2, 3]]).float(),
]


@pytest.mark.parametrize("layers", [FIRST, MIDDLE, LAST], ids=["first", "middle", "last"])
def test_what_the_bounds_pass_the_runtime_runs_and_outputs_pass_too(layers: LayerRange) -> None:
    shard = tiny_shard(layers)
    for x in INPUTS:
        try:
            forward(x, layers)
        except ProtocolViolation:
            continue
        y = shard(x, shard.new_cache())
        result(y, layers, tokens=x.shape[0])


@pytest.mark.parametrize("layers", [FIRST, MIDDLE, LAST], ids=["first", "middle", "last"])
def test_what_the_runtime_refuses_the_bounds_refuse_first(layers: LayerRange) -> None:
    shard = tiny_shard(layers)
    refused = 0
    for x in INPUTS:
        try:
            shard(x, shard.new_cache())
        except ValueError:
            refused += 1
            with pytest.raises(ProtocolViolation):
                forward(x, layers)
    assert refused >= 5
