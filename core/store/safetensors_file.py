"""Reading and writing the safetensors container, one tensor at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and ``[begin, end)`` data offsets (relative to the end of the
header), then the tensors' raw bytes back to back. The store writes it itself so that a
model is converted tensor by tensor without holding it all in memory, and so that each
tensor's absolute offset is known: raw bytes are then just an mmap slice.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from core.errors import ModelFormatError
from core.store.manifest import DTYPE_ITEMSIZE, SAFETENSORS_DTYPE, TensorEntry

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Upper bound on a safetensors JSON header we agree to parse (the reference library's own limit)."""

HEADER_ALIGNMENT = 8
"""The JSON header is padded with spaces so tensor data starts on this boundary."""

_FROM_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPE.items()}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor to be written: name, our dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]


@dataclass(frozen=True, slots=True)
class HeaderTensor:
    """One tensor as a safetensors header describes it, with absolute byte offsets in the file.

    ``dtype`` is the safetensors name (``"F32"``, ``"I64"`` ...), so headers with types the
    store does not keep can still be read and reported.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def layout(specs: Sequence[TensorSpec]) -> tuple[bytes, list[tuple[TensorSpec, int]]]:
    """Lay out ``specs`` in a safetensors file: the file's first bytes (length + padded JSON
    header) and each spec with its absolute data offset, in the order the data must be written.

    Wider dtypes come first so every tensor starts aligned to its element size; within a
    dtype width the given order is kept.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ModelFormatError("duplicate tensor names in a model", hint="each tensor name must be unique")
    ordered = sorted(specs, key=lambda s: -DTYPE_ITEMSIZE[s.dtype])
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    relative: list[int] = []
    cursor = 0
    for spec in ordered:
        header[spec.name] = {
            "dtype": SAFETENSORS_DTYPE[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [cursor, cursor + spec.nbytes],
        }
        relative.append(cursor)
        cursor += spec.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = text + b" " * (-(8 + len(text)) % HEADER_ALIGNMENT)
    prefix = struct.pack("<Q", len(padded)) + padded
    return prefix, [(spec, len(prefix) + rel) for spec, rel in zip(ordered, relative, strict=True)]


def write_tensors(
    out: BinaryIO,
    specs: Sequence[TensorSpec],
    load: Callable[[TensorSpec], bytes | memoryview],
) -> list[TensorEntry]:
    """Write a complete safetensors file to ``out``, loading one tensor's bytes at a time.

    ``load(spec)`` must return exactly ``spec.nbytes`` little-endian bytes. Returns the
    manifest entries (absolute offsets, sha256 of each tensor's bytes) in file order.
    """
    prefix, placed = layout(specs)
    out.write(prefix)
    entries: list[TensorEntry] = []
    for spec, offset in placed:
        data = memoryview(load(spec)).cast("B")
        if data.nbytes != spec.nbytes:
            raise ModelFormatError(
                f"tensor {spec.name!r} produced {data.nbytes} bytes, expected {spec.nbytes}",
                hint="the source file is inconsistent with its own header",
            )
        out.write(data)
        entries.append(
            TensorEntry(
                name=spec.name,
                dtype=spec.dtype,
                shape=spec.shape,
                offset=offset,
                nbytes=spec.nbytes,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    return entries


def parse_header(prefix: bytes, file_size: int, *, source: str) -> dict[str, HeaderTensor]:
    """Parse the header of a safetensors file of ``file_size`` bytes whose first bytes are
    ``prefix`` (at least the 8-byte length and the JSON header).

    Validates offsets (contiguous, inside the file) and the size each dtype and shape imply;
    raises :class:`ModelFormatError` naming ``source`` on any flaw.
    """
    if len(prefix) < 8:
        raise ModelFormatError(f"{source} is too short to be a safetensors file")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES or 8 + length > file_size or len(prefix) < 8 + length:
        raise ModelFormatError(f"{source} has an invalid safetensors header length {length}")
    try:
        header = json.loads(prefix[8 : 8 + length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{source} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"{source} has a corrupt safetensors header (not an object)")
    header.pop("__metadata__", None)
    data_start = 8 + length
    tensors: dict[str, HeaderTensor] = {}
    for name, raw in header.items():
        tensors[name] = _header_tensor(name, raw, data_start, source)
    spans = sorted((t.start, t.end, t.name) for t in tensors.values())
    cursor = data_start
    for start, end, name in spans:
        if start != cursor:
            raise ModelFormatError(f"{source}: tensor {name!r} data is not contiguous with the previous tensor")
        cursor = end
    if cursor > file_size:
        raise ModelFormatError(f"{source} is truncated: tensor data ends at {cursor}, file has {file_size} bytes")
    return tensors


def _header_tensor(name: str, raw: object, data_start: int, source: str) -> HeaderTensor:
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{source}: header entry for {name!r} is not an object")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or any(type(d) is not int or d < 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or any(type(o) is not int or o < 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise ModelFormatError(f"{source}: header entry for {name!r} is malformed")
    ours = _FROM_SAFETENSORS.get(dtype)
    if ours is not None and offsets[1] - offsets[0] != math.prod(shape) * DTYPE_ITEMSIZE[ours]:
        raise ModelFormatError(f"{source}: tensor {name!r} size does not match {dtype}{shape}")
    return HeaderTensor(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_header(f: BinaryIO, file_size: int, *, source: str) -> dict[str, HeaderTensor]:
    """Read and parse the safetensors header at the start of the open file ``f``."""
    head = f.read(8)
    if len(head) < 8:
        raise ModelFormatError(f"{source} is too short to be a safetensors file")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > file_size:
        raise ModelFormatError(f"{source} has an invalid safetensors header length {length}")
    return parse_header(head + f.read(length), file_size, source=source)


def store_dtype(safetensors_dtype: str) -> str | None:
    """Our dtype name for a safetensors dtype, or ``None`` if the store does not keep that type."""
    return _FROM_SAFETENSORS.get(safetensors_dtype)


def entries_match_header(entries: Iterable[TensorEntry], header: Mapping[str, HeaderTensor]) -> str | None:
    """The name of the first manifest entry the safetensors header disagrees with, or ``None``."""
    for e in entries:
        h = header.get(e.name)
        if h is None or store_dtype(h.dtype) != e.dtype or h.shape != e.shape or h.start != e.offset or h.end != e.end:
            return e.name
    return None
