"""The last stage's answer cut to its ``k`` largest logits per row: values and their token ids.

Sampling needs the whole vocabulary only for some requests. Greedy decoding needs the
largest logit; top-k sampling with ``k`` no larger than what was sent needs those ``k``
(the softmax and the top-p cut of :mod:`server.sampling` then see exactly the numbers the
full logits would give them). For those requests the coordinator asks the last stage for
the top ``k`` only (``Forward.logits_top``), which shrinks the answer from ``vocab`` floats
per row (196 KB for a 49k vocabulary in fp32) to ``k`` values and ``k`` int32 ids.

The coordinator turns the answer back into a dense row with ``-inf`` everywhere else
(:func:`densify`), so sampling code reads the same shape either way. Everything received
is checked by :func:`check_top_logits` before it is used.
"""

from __future__ import annotations

import torch

from core.errors import ProtocolViolation

MAX_LOGITS_TOP: int = 1024
"""The most logits per row a Forward may ask for."""

_HINT = "the volunteer runs an incompatible or faulty Butterfly; it is replaced"


def top_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest values of each row (descending, in ``logits``' dtype) and their ids as int32."""
    if not 1 <= k <= MAX_LOGITS_TOP:
        raise ValueError(f"k must be 1..{MAX_LOGITS_TOP}, got {k}")
    values, ids = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return values.contiguous(), ids.to(torch.int32).contiguous()


def check_top_logits(values: torch.Tensor, ids: torch.Tensor, *, vocab_size: int, tokens: int, k: int) -> None:
    """Raise :class:`ProtocolViolation` unless ``values``/``ids`` are a valid top-``k`` answer.

    Both ``[rows, min(k, vocab)]`` with ``rows`` 1 or ``tokens``; ids int32, distinct within
    a row and inside the vocabulary; values floating point and finite.
    """
    width = min(k, vocab_size)
    if values.dim() != 2 or tuple(ids.shape) != tuple(values.shape) or values.shape[1] != width:
        _fail(f"top-{k} logits have shapes {list(values.shape)} and {list(ids.shape)}; expected [rows, {width}] both")
    if values.shape[0] not in (1, tokens):
        _fail(f"top-{k} logits for {values.shape[0]} rows; the step had {tokens} tokens (expected 1 or {tokens})")
    if ids.dtype != torch.int32 or not values.is_floating_point():
        _fail(f"top-{k} logits have dtypes {values.dtype} and {ids.dtype}; expected floating point and int32")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        _fail(f"top-{k} logits name token ids outside the vocabulary of {vocab_size}")
    if not bool(torch.isfinite(values).all()):
        _fail(f"top-{k} logits contain non-finite values")
    if ids.numel() and bool((ids.sort(dim=-1).values.diff(dim=-1) == 0).any()):
        _fail(f"top-{k} logits name a token twice in one row")


def densify(values: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Rows of ``vocab_size`` float32 logits: ``values`` at ``ids``, ``-inf`` elsewhere."""
    dense = torch.full((values.shape[0], vocab_size), float("-inf"), dtype=torch.float32)
    return dense.scatter_(-1, ids.long(), values.float())


def sparse_part(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (values, ids) a :func:`densify` row holds, or None when ``dense`` is full logits."""
    finite = torch.isfinite(dense)
    if bool(finite.all()):
        return None
    width = int(finite.sum(dim=-1).min())
    values, ids = torch.topk(dense, width, dim=-1)
    return values, ids.to(torch.int32)


def _fail(problem: str) -> None:
    raise ProtocolViolation(f"result of the last stage: {problem}", hint=_HINT)


__all__ = ["MAX_LOGITS_TOP", "check_top_logits", "densify", "sparse_part", "top_logits"]
