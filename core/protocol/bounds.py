"""Bounds of activations: is this tensor what the assignment it is for can take or give?

A frame that decodes is well formed, but its tensor may still not fit the stage it is
sent to: the wrong dtype or rank, another model's hidden size, token ids outside the
vocabulary, more tokens than the KV cache was budgeted for, or NaN/inf. These pure
checks run before any compute (a volunteer on a Forward's input) and before any use
(the coordinator on a Result's output); a misfit raises :class:`ProtocolViolation`
saying what was expected and what came.

The shapes are the runtime's (:class:`core.model.shard.Shard`): the first stage takes
int64 token ids ``[T]``, every other stage float hidden states ``[T, hidden]``; a stage
returns hidden states ``[T, hidden]``, or, the last one, float logits ``[1, vocab]``
(the last token's) or ``[T, vocab]`` (every token's).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NoReturn

import torch

from core.errors import ProtocolViolation
from core.types import LayerRange

TOKEN_DTYPE: torch.dtype = torch.int64
"""The dtype of token ids, the first stage's input."""
FLOAT_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.bfloat16, torch.float16})
"""Float dtypes hidden states and logits may travel in (compute dtype or compressed)."""

_HINT = "the peer runs an incompatible or faulty Butterfly, or serves another model; update both sides"


def check_forward_input(
    x: object,
    *,
    layers: LayerRange,
    hidden_size: int,
    vocab_size: int,
    max_tokens: int,
    start_pos: int,
    allowed_dtypes: Collection[torch.dtype] = FLOAT_DTYPES,
) -> None:
    """Raise :class:`ProtocolViolation` unless ``x`` is a valid input of the stage serving ``layers``.

    The first stage (``layers.is_first``) takes int64 token ids ``[T]`` with every id in
    ``[0, vocab_size)``; any other stage takes hidden states ``[T, hidden_size]`` of a
    dtype in ``allowed_dtypes``, all finite. ``T`` must be at least 1 and the tokens must
    fit the assignment's context: ``start_pos + T <= max_tokens``. Metadata (type, dtype,
    rank, sizes) is checked before values are read; nothing is modified.
    """
    where = f"forward input of layers {layers}"
    tensor = _tensor(where, x)
    if start_pos < 0 or start_pos >= max_tokens:
        _fail(where, f"starts at position {start_pos}, but the assignment's context holds positions "
                     f"0 to {max_tokens - 1}")
    room = max_tokens - start_pos
    if layers.is_first:
        if tensor.dtype != TOKEN_DTYPE:
            _fail(where, f"must be int64 token ids, got {_dtype_name(tensor.dtype)}")
        if tensor.dim() != 1:
            _fail(where, f"must be token ids of shape [T], got shape {list(tensor.shape)}")
        _check_tokens(where, tensor.shape[0], room=room, start_pos=start_pos, max_tokens=max_tokens)
        lo, hi = torch.aminmax(tensor)
        if int(lo) < 0 or int(hi) >= vocab_size:
            _fail(where, f"has token ids from {int(lo)} to {int(hi)}; the vocabulary is [0, {vocab_size})")
        return
    _check_float_matrix(where, tensor, cols=hidden_size, what="hidden states", cols_name="hidden",
                        allowed_dtypes=allowed_dtypes)
    _check_tokens(where, tensor.shape[0], room=room, start_pos=start_pos, max_tokens=max_tokens)
    _check_finite(where, tensor)


def check_result_output(
    y: object,
    *,
    layers: LayerRange,
    hidden_size: int,
    vocab_size: int,
    tokens: int,
    allowed_dtypes: Collection[torch.dtype] = FLOAT_DTYPES,
) -> None:
    """Raise :class:`ProtocolViolation` unless ``y`` is a valid output of a step of ``tokens`` tokens.

    A stage that is not the last returns hidden states ``[tokens, hidden_size]``; the
    last stage (``layers.is_last``) returns logits ``[1, vocab_size]`` (the last token's)
    or ``[tokens, vocab_size]`` (every token's). The dtype must be in ``allowed_dtypes``
    and every value finite. Metadata is checked before values are read.
    """
    where = f"result of layers {layers}"
    tensor = _tensor(where, y)
    if layers.is_last:
        _check_float_matrix(where, tensor, cols=vocab_size, what="logits", cols_name="vocab",
                            allowed_dtypes=allowed_dtypes)
        if tensor.shape[0] not in (1, tokens):
            _fail(where, f"has logits for {tensor.shape[0]} tokens; the step had {tokens} "
                         f"(expected 1 or {tokens})")
    else:
        _check_float_matrix(where, tensor, cols=hidden_size, what="hidden states", cols_name="hidden",
                            allowed_dtypes=allowed_dtypes)
        if tensor.shape[0] != tokens:
            _fail(where, f"has hidden states for {tensor.shape[0]} tokens; the step had {tokens}")
    _check_finite(where, tensor)


def _tensor(where: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        _fail(where, f"must be a tensor, got {type(value).__name__}")
    return value


def _check_float_matrix(where: str, tensor: torch.Tensor, *, cols: int, what: str, cols_name: str,
                        allowed_dtypes: Collection[torch.dtype]) -> None:
    if tensor.dtype not in allowed_dtypes:
        allowed = ", ".join(sorted(_dtype_name(d) for d in allowed_dtypes))
        _fail(where, f"must be {what} of dtype {allowed}, got {_dtype_name(tensor.dtype)}")
    if tensor.dim() != 2 or tensor.shape[1] != cols:
        _fail(where, f"must be {what} of shape [T, {cols_name}={cols}], got shape {list(tensor.shape)}")


def _check_tokens(where: str, count: int, *, room: int, start_pos: int, max_tokens: int) -> None:
    if count < 1:
        _fail(where, "carries no tokens (T = 0)")
    if count > room:
        _fail(where, f"carries {count} tokens from position {start_pos}; the assignment's context of "
                     f"{max_tokens} tokens leaves room for {room}")


def _check_finite(where: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        _fail(where, "contains NaN or infinite values")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fail(where: str, problem: str) -> NoReturn:
    raise ProtocolViolation(f"{where} {problem}", hint=_HINT)


__all__ = ["FLOAT_DTYPES", "TOKEN_DTYPE", "check_forward_input", "check_result_output"]
