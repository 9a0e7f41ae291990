"""How activations travel on the wire: as they are, as float16/bfloat16, or as int8 with per-row scales.

A *codec* is chosen per link by the coordinator and named in every Forward and Result:

- ``model``: the tensor as computed (the pool's compute dtype; fp32 logits), bit for bit;
- ``float16`` / ``bfloat16``: a 16-bit float copy (half the bytes of fp32);
- ``int8``: per-row absmax quantization: each row ``r`` of the last dimension travels as
  ``round(r / s)`` in ``[-127, 127]`` with ``s = max|r| / 127`` sent alongside as float32
  (a quarter of the bytes of fp32, plus 4 bytes per row).

Integer tensors (token ids) always travel as they are, whatever the codec. A float tensor
whose compressed form would not be finite (beyond float16's range, say) travels under
``model`` instead, so :func:`encode` never produces a payload the receiver must refuse.
Compute never happens in the wire dtype: :func:`decode` restores the receiver's compute
dtype first. Everything received is checked by :func:`check_payload` (dtypes, shapes of the
scales against the data, scale bounds, the int8 range) before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import torch

from core.errors import ConfigError, ProtocolViolation

CODECS: tuple[str, ...] = ("model", "float16", "bfloat16", "int8")
"""Every codec, by its wire name."""

INT8_LEVELS: int = 127
"""Quantized values lie in ``[-INT8_LEVELS, INT8_LEVELS]`` (symmetric; -128 is never produced)."""

MAX_SCALE: float = torch.finfo(torch.float32).max / INT8_LEVELS
"""The largest int8 scale whose dequantized values stay finite in float32."""

_TOKEN_DTYPES = frozenset({torch.int64, torch.int32})
_FLOAT_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
_CAST: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_HINT = "the peer runs an incompatible or faulty Butterfly; update both sides to the same release"


@dataclass(frozen=True, slots=True)
class EncodedTensor:
    """A tensor as it travels: ``codec``, the wire ``data``, int8 ``scales`` and the ``dtype`` it decodes to.

    ``scales`` is set only for ``int8``: float32 of shape ``data.shape[:-1] + (1,)``.
    ``dtype`` is what :func:`decode` returns by default: the original dtype after
    :func:`encode`; a receiver building one from a message names its own compute dtype.
    """

    codec: str
    data: torch.Tensor
    scales: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32

    @property
    def nbytes(self) -> int:
        """Bytes of tensor payload on the wire (data plus scales), without framing."""
        total = self.data.numel() * self.data.element_size()
        if self.scales is not None:
            total += self.scales.numel() * self.scales.element_size()
        return total


def encode(x: torch.Tensor, codec: str) -> EncodedTensor:
    """Encode ``x`` for the wire under ``codec``; ``decode`` of the result has ``x``'s shape and dtype.

    ``model`` returns ``x`` itself. Integer tensors are returned as they are under any
    codec. A float tensor that contains non-finite values, or whose cast would not be
    finite, is returned under ``model`` (the receiver's frame check then refuses
    non-finite values itself). Raises :class:`ConfigError` for an unknown codec.
    """
    if codec not in CODECS:
        raise ConfigError(f"unknown activation codec {codec!r}", hint=f"use one of {', '.join(CODECS)}")
    if codec == "model" or not x.is_floating_point():
        return EncodedTensor(codec, x, None, x.dtype)
    as_is = EncodedTensor("model", x, None, x.dtype)
    if codec in _CAST:
        data = x.to(_CAST[codec])
        if x.numel() and not bool(torch.isfinite(data).all()):
            return as_is
        return EncodedTensor(codec, data, None, x.dtype)
    if x.dim() == 0:
        return as_is
    rows = x.float()
    if rows.numel() and not bool(torch.isfinite(rows).all()):
        return as_is
    scales = rows.abs().amax(dim=-1, keepdim=True) / INT8_LEVELS if rows.shape[-1] else rows.new_zeros(
        (*rows.shape[:-1], 1))
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    data = torch.round(rows / safe).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return EncodedTensor("int8", data, scales.contiguous(), x.dtype)


def decode(enc: EncodedTensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The tensor ``enc`` carries, in ``dtype`` (default ``enc.dtype``); token ids come back as they are.

    Checks the payload first (:func:`check_payload`); raises :class:`ProtocolViolation` for
    anything that does not fit its codec.
    """
    check_payload(enc.codec, enc.data, enc.scales)
    target = dtype or enc.dtype
    if enc.data.dtype in _TOKEN_DTYPES:
        return enc.data
    if not target.is_floating_point:
        raise ConfigError(f"cannot decode activations into {target}", hint="decode into a float dtype")
    if enc.codec == "int8":
        assert enc.scales is not None
        return (enc.data.float() * enc.scales).to(target)
    return enc.data.to(target)


def check_payload(codec: str, data: torch.Tensor, scales: torch.Tensor | None) -> None:
    """Raise :class:`ProtocolViolation` unless ``data`` (and ``scales``) are a valid payload of ``codec``.

    Token ids (int64/int32) are valid under every codec, without scales. Otherwise
    ``model`` takes any float dtype, ``float16``/``bfloat16`` exactly that dtype, and
    ``int8`` int8 data in ``[-127, 127]`` of rank >= 1 with float32 scales shaped
    ``data.shape[:-1] + (1,)``, each finite and in ``[0, MAX_SCALE]``.
    """
    if codec not in CODECS:
        _fail(f"unknown activation codec {codec!r}; known: {', '.join(CODECS)}")
    if data.dtype in _TOKEN_DTYPES:
        if scales is not None:
            _fail("token ids travel without scales")
        return
    if codec != "int8":
        if scales is not None:
            _fail(f"codec {codec} carries no scales")
        allowed = _FLOAT_DTYPES if codec == "model" else frozenset({_CAST[codec]})
        if data.dtype not in allowed:
            _fail(f"codec {codec} carries {_names(allowed)} activations, got {_name(data.dtype)}")
        return
    if data.dtype is not torch.int8:
        _fail(f"codec int8 carries int8 activations, got {_name(data.dtype)}")
    if data.dim() == 0:
        _fail("int8 activations need at least one dimension (the row)")
    if scales is None:
        _fail("int8 activations need their per-row scales")
    want = (*data.shape[:-1], 1)
    if scales.dtype is not torch.float32 or tuple(scales.shape) != want:
        _fail(f"int8 scales must be float32 of shape {list(want)}, got {_name(scales.dtype)} {list(scales.shape)}")
    if scales.numel() and not bool(((scales >= 0) & (scales <= MAX_SCALE)).all()):
        _fail(f"int8 scales must be finite and in [0, {MAX_SCALE:.3g}]")
    if data.numel() and int(data.min()) < -INT8_LEVELS:
        _fail(f"int8 activations must lie in [-{INT8_LEVELS}, {INT8_LEVELS}]")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _names(dtypes: frozenset[torch.dtype]) -> str:
    return "/".join(sorted(_name(d) for d in dtypes))


def _fail(message: str) -> NoReturn:
    raise ProtocolViolation(message, hint=_HINT)


__all__ = ["CODECS", "INT8_LEVELS", "MAX_SCALE", "EncodedTensor", "check_payload", "decode", "encode"]
