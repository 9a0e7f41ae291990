"""Binary frames: a small JSON header plus raw tensor bytes, checked before use.

One websocket binary message carries exactly one frame::

    b"BFLY" | u8 protocol version | u32 LE header length | header | tensor bytes

The header is a UTF-8 JSON object ``{"kind": ..., <fields>..., "tensors": [{"name",
"dtype", "shape"}, ...]}``; the tensor bytes are the listed tensors' raw contents,
little-endian and C-contiguous, concatenated in that order with nothing before, between
or after them. Nothing here is ever unpickled: tensors are views over a private copy
of their bytes (``numpy.frombuffer`` + ``torch.from_numpy``, the same zero-copy view
as ``torch.frombuffer`` but cheaper per call and with numpy's fast finiteness check),
built only after every declared size has been checked against :class:`Limits` and
against the bytes actually received.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch

from core.errors import FrameTooLarge, ProtocolViolation, VersionMismatch
from core.protocol.version import PROTOCOL_VERSION  # the version byte of every frame and the Hello field

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("Butterfly's wire format needs a little-endian host")


MAGIC: bytes = b"BFLY"
PREFIX_BYTES: int = len(MAGIC) + 1 + 4
"""Bytes before the header: magic, version byte, header length."""

MAX_KIND_CHARS: int = 64
MAX_TENSOR_NAME_CHARS: int = 128

DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
}
"""The only tensor dtypes a frame may carry, by their wire names."""

_DTYPE_NAMES: Mapping[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
# How tensor bytes are viewed in numpy on arrival; numpy has no bfloat16, so its raw bits.
_NUMPY_VIEWS: Mapping[torch.dtype, type[np.generic]] = {
    torch.float32: np.float32,
    torch.bfloat16: np.uint16,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
}
_FLOAT_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
_HINT = "the peer runs an incompatible or faulty Butterfly; update both sides to the same release"

_PREFIX = MAGIC + bytes([PROTOCOL_VERSION])
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds a received frame must respect; every one is checked before allocating.

    ``max_frame_bytes`` bounds the whole frame (64 MiB: a weight chunk of 8 MiB or
    the hidden states of a long prefill fit easily), ``max_header_bytes`` its JSON
    header (1 MiB: an Assign lists ~150 bytes per weight tensor, and a stage of 60
    layers of a large model has ~700 of them), ``max_tensors`` how many tensors it
    carries (4) and ``max_dims`` the rank of each (4). ``allow_nonfinite`` lets NaN/inf
    through in float tensors (off: a stage that produces them is faulty and must not
    poison the pipeline).
    """

    max_frame_bytes: int = 64 * 2**20
    max_header_bytes: int = 2**20
    max_tensors: int = 4
    max_dims: int = 4
    allow_nonfinite: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its kind, the other header fields and its named tensors.

    Decoded tensors are CPU tensors that own writable memory of their own.
    """

    kind: str
    header: Mapping[str, Any]
    tensors: Mapping[str, torch.Tensor]


def encode_frame(
    kind: str, header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None
) -> bytes:
    """Serialize one frame; the result decodes with :func:`decode_frame` to equal values.

    ``header`` must be JSON-serializable with finite floats and must not use the
    reserved keys ``kind`` and ``tensors``. Tensors may live on any device and have
    any layout; they are sent as C-contiguous little-endian bytes (one copy of
    their data). Raises :class:`ProtocolViolation` for anything that cannot be sent.
    """
    if "kind" in header or "tensors" in header:
        _fail("a frame header must not use the reserved keys 'kind' or 'tensors'", hint=None)
    specs: list[dict[str, Any]] = []
    blobs: list[Any] = []
    for name, tensor in (tensors or {}).items():
        dtype_name = _DTYPE_NAMES.get(tensor.dtype)
        if dtype_name is None:
            _fail(f"tensor {name!r} has dtype {tensor.dtype}, which frames cannot carry "
                  f"(allowed: {', '.join(DTYPES)})", hint=None)
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        specs.append({"name": name, "dtype": dtype_name, "shape": list(tensor.shape)})
        blobs.append(flat.view(torch.uint8).numpy())
    try:
        header_bytes = _ENCODER.encode({"kind": kind, **header, "tensors": specs}).encode("ascii")
    except (TypeError, ValueError) as exc:
        _fail(f"cannot encode the header of a {kind!r} frame: {exc}", hint=None)
    return b"".join((_PREFIX, len(header_bytes).to_bytes(4, "little"), header_bytes, *blobs))


def decode_frame(data: bytes | bytearray | memoryview, limits: Limits = Limits()) -> Frame:
    """Parse and fully check one received frame.

    Every size, count, rank, dtype and shape is checked against ``limits`` and the
    bytes present before any tensor memory is allocated; float tensors must be
    finite unless ``limits.allow_nonfinite``. Raises :class:`FrameTooLarge` for an
    exceeded bound, :class:`VersionMismatch` for another protocol version and
    :class:`ProtocolViolation` for anything else that is wrong, each saying what.
    """
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        _fail(f"a frame must be a contiguous byte buffer: {exc}")
    size = view.nbytes
    if size > limits.max_frame_bytes:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {limits.max_frame_bytes} bytes",
                            hint="send smaller chunks, or raise the receiver's max_frame_bytes")
    if size < PREFIX_BYTES:
        _fail(f"truncated frame: {size} bytes, the fixed prefix alone needs {PREFIX_BYTES}")
    if view[: len(MAGIC)] != MAGIC:
        _fail(f"not a Butterfly frame: starts with {bytes(view[:len(MAGIC)])!r}, expected {MAGIC!r}")
    version = view[len(MAGIC)]
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(f"frame uses protocol version {version}, this side speaks {PROTOCOL_VERSION}",
                              hint="update Butterfly so both sides run the same protocol version")
    header_len = int.from_bytes(view[len(MAGIC) + 1 : PREFIX_BYTES], "little")
    if header_len > limits.max_header_bytes:
        raise FrameTooLarge(f"frame header of {header_len} bytes exceeds the limit of "
                            f"{limits.max_header_bytes} bytes", hint=_HINT)
    if header_len > size - PREFIX_BYTES:
        _fail(f"truncated frame: header declares {header_len} bytes, only {size - PREFIX_BYTES} follow")
    header = _parse_header(view[PREFIX_BYTES : PREFIX_BYTES + header_len])
    kind = header.pop("kind", None)
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_CHARS:
        _fail(f"frame header needs 'kind', a string of 1 to {MAX_KIND_CHARS} characters, got {_short(kind)}")
    specs = _parse_specs(header.pop("tensors", None), limits)
    body = view[PREFIX_BYTES + header_len :]
    declared = sum(nbytes for _, _, _, nbytes in specs)
    if declared != body.nbytes:
        _fail(f"{kind!r} frame: its tensors declare {declared} bytes but {body.nbytes} bytes follow the header")
    return Frame(kind, header, _build_tensors(kind, specs, body, limits))


def _parse_header(raw: memoryview) -> dict[str, Any]:
    try:
        header = _DECODER.decode(str(raw, "utf-8"))
    except UnicodeDecodeError as exc:
        _fail(f"frame header is not valid UTF-8: {exc.reason} at byte {exc.start}")
    except RecursionError:
        _fail("frame header JSON is nested too deeply")
    except ValueError as exc:
        _fail(f"frame header is not valid JSON: {exc}")
    if not isinstance(header, dict):
        _fail(f"frame header must be a JSON object, got {type(header).__name__}")
    return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in a frame header")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999, which float() reads as infinity
        raise ValueError(f"number {text[:24]} is out of range (headers carry finite numbers only)")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants, parse_float=_finite_float)


def _parse_specs(raw: Any, limits: Limits) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """Check the tensor list; return (name, dtype, shape, nbytes) per tensor, no allocation."""
    if not isinstance(raw, list):
        _fail(f"frame header needs 'tensors', a list, got {_short(raw)}")
    if len(raw) > limits.max_tensors:
        raise FrameTooLarge(f"frame carries {len(raw)} tensors, the limit is {limits.max_tensors}", hint=_HINT)
    specs: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
    names: set[str] = set()
    for index, spec in enumerate(raw):
        if not isinstance(spec, dict) or spec.keys() != {"name", "dtype", "shape"}:
            _fail(f"tensor #{index} must be an object with exactly 'name', 'dtype' and 'shape', got {_short(spec)}")
        name, dtype_name, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TENSOR_NAME_CHARS:
            _fail(f"tensor #{index} name must be a string of 1 to {MAX_TENSOR_NAME_CHARS} characters, "
                  f"got {_short(name)}")
        if name in names:
            _fail(f"tensor name {name!r} appears twice")
        names.add(name)
        dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            _fail(f"tensor {name!r} has dtype {_short(dtype_name)}; allowed: {', '.join(DTYPES)}")
        if not isinstance(shape, list):
            _fail(f"tensor {name!r} shape must be a list of integers, got {_short(shape)}")
        if len(shape) > limits.max_dims:
            raise FrameTooLarge(f"tensor {name!r} has {len(shape)} dimensions, the limit is {limits.max_dims}",
                                hint=_HINT)
        numel = 1
        for dim in shape:
            if type(dim) is not int or not 0 <= dim <= limits.max_frame_bytes:
                _fail(f"tensor {name!r} has dimension {_short(dim)}; each must be an integer "
                      f"from 0 to {limits.max_frame_bytes}")
            numel *= dim
        nbytes = numel * dtype.itemsize
        if nbytes > limits.max_frame_bytes:
            raise FrameTooLarge(f"tensor {name!r} of shape {shape} would need {nbytes} bytes, "
                                f"the frame limit is {limits.max_frame_bytes}", hint=_HINT)
        specs.append((name, dtype, tuple(shape), nbytes))
    return specs


def _build_tensors(
    kind: str, specs: list[tuple[str, torch.dtype, tuple[int, ...], int]], body: memoryview, limits: Limits
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for name, dtype, shape, nbytes in specs:
        # One private, aligned copy per tensor: writable, owns its memory.
        array = np.frombuffer(bytearray(body[offset : offset + nbytes]), dtype=_NUMPY_VIEWS[dtype]).reshape(shape)
        offset += nbytes
        if not limits.allow_nonfinite and dtype in _FLOAT_DTYPES and not _all_finite(array, dtype):
            _fail(f"{kind!r} frame: tensor {name!r} contains NaN or infinite values",
                  hint="the sending stage produced non-finite numbers; check its dtype and weights")
        tensor = torch.from_numpy(array)
        tensors[name] = tensor.view(torch.bfloat16) if dtype is torch.bfloat16 else tensor
    return tensors


def _all_finite(array: np.ndarray, dtype: torch.dtype) -> bool:
    if dtype is torch.bfloat16:  # carried as uint16 bits: non-finite iff the exponent is all ones
        return not bool(((array & 0x7F80) == 0x7F80).any())
    return bool(np.isfinite(array).all())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(message: str, *, hint: str | None = _HINT) -> NoReturn:
    raise ProtocolViolation(message, hint=hint)


__all__ = ["DTYPES", "MAGIC", "PROTOCOL_VERSION", "Frame", "Limits", "decode_frame", "encode_frame"]
