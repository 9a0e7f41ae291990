"""Our streaming safetensors writer against the reference ``safetensors`` reader, and header validation."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.errors import ModelFormatError
from core.store.manifest import TensorEntry
from core.store.safetensors_file import TensorSpec, layout, parse_header, read_header, write_tensors


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "norm": torch.randn(3, dtype=torch.float16),  # odd 16-bit size first in the given order
        "w": torch.randn(5, 7),
        "b": torch.randn(11, dtype=torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> list[TensorEntry]:
    specs = [TensorSpec(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in tensors.items()]
    with path.open("wb") as f:
        return write_tensors(f, specs, lambda s: _raw(tensors[s.name]))


def test_written_file_reads_back_with_reference_library(tmp_path: Path) -> None:
    tensors = _tensors()
    entries = _write(tmp_path / "m.safetensors", tensors)
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(f.get_tensor(name), tensor), name
    raw = (tmp_path / "m.safetensors").read_bytes()
    for entry in entries:
        itemsize = 4 if entry.dtype == "float32" else 2
        assert entry.offset % itemsize == 0
        expected = _raw(tensors[entry.name])
        assert raw[entry.offset : entry.end] == expected
    assert [e.dtype for e in entries][:2] == ["float32", "float32"]  # wide dtypes first


def test_header_of_reference_file_parses_to_absolute_offsets(tmp_path: Path) -> None:
    tensors = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.ones(2, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "ref.safetensors"))
    raw = (tmp_path / "ref.safetensors").read_bytes()
    with (tmp_path / "ref.safetensors").open("rb") as f:
        header = read_header(f, len(raw), source="ref")
    assert raw[header["x"].start : header["x"].end] == tensors["x"].numpy().tobytes()
    assert header["y"].dtype == "BF16" and header["y"].shape == (2,)


def test_layout_rejects_duplicate_names() -> None:
    with pytest.raises(ModelFormatError):
        layout([TensorSpec("a", "float32", (1,)), TensorSpec("a", "float32", (1,))])


def _file(header: dict[str, object], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    ("blob", "size_delta"),
    [
        (b"\x01\x02", 0),
        (struct.pack("<Q", 10**12) + b"{}", 0),
        (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), -4),  # truncated
        (_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), 0),  # size mismatch
        (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), 0),  # gap
        (_file({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), 0),
        (_file({"a": [1, 2]}, b""), 0),
        (struct.pack("<Q", 4) + b"nope", 0),
    ],
)
def test_parse_header_rejects_corrupt_files(blob: bytes, size_delta: int) -> None:
    with pytest.raises(ModelFormatError):
        read_header(io.BytesIO(blob), len(blob) + size_delta, source="bad")


def test_parse_header_accepts_other_dtypes_for_reporting() -> None:
    blob = _file({"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16)
    assert parse_header(blob, len(blob), source="ok")["ids"].dtype == "I64"
