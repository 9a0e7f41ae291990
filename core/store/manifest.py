"""The manifest of a stored model: what each tensor is, where its bytes lie, and their hash.

A manifest is the store's promise about a model directory. Volunteers receive tensor
bytes from the coordinator and check them against ``TensorEntry.sha256``, so
:meth:`Manifest.from_json` treats its input as untrusted and validates it strictly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from core.errors import ModelFormatError

MANIFEST_FORMAT_VERSION = 1
"""Bumped whenever the meaning of a manifest field changes."""

DTYPE_ITEMSIZE: Mapping[str, int] = MappingProxyType({"float32": 4, "bfloat16": 2, "float16": 2})
"""Bytes per element of every dtype the store keeps tensors in."""

SAFETENSORS_DTYPE: Mapping[str, str] = MappingProxyType({"float32": "F32", "bfloat16": "BF16", "float16": "F16"})
"""Our dtype names -> the safetensors header's names for them."""

SourceFormat = Literal["gguf", "hf"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MODEL_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MANIFEST_KEYS = frozenset(
    {
        "format_version",
        "model_id",
        "name",
        "source",
        "source_format",
        "hf_config",
        "tensors",
        "weights_file",
        "created_at",
    }
)
_ENTRY_KEYS = frozenset({"dtype", "shape", "offset", "nbytes", "sha256"})


def is_valid_model_id(model_id: str) -> bool:
    """Whether ``model_id`` has the shape the store gives ids (safe as a single path component)."""
    return bool(_MODEL_ID_RE.fullmatch(model_id))


def freeze_json(value: Any) -> Any:
    """A read-only deep copy of a JSON value: dicts become mapping proxies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze_json(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze_json(v) for v in value)
    return value


def thaw_json(value: Any) -> Any:
    """A mutable deep copy of a (possibly frozen) JSON value: plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw_json(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a stored model: raw little-endian bytes ``[offset, offset + nbytes)``
    of the weights file, holding ``shape`` elements of ``dtype``, whose sha256 is ``sha256``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    sha256: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ModelFormatError("a tensor entry has an empty name", hint="rebuild the manifest")
        if self.dtype not in DTYPE_ITEMSIZE:
            raise ModelFormatError(
                f"tensor {self.name!r} has unsupported dtype {self.dtype!r}",
                hint=f"stored tensors must be one of {sorted(DTYPE_ITEMSIZE)}",
            )
        if any(type(d) is not int or d < 0 for d in self.shape):
            raise ModelFormatError(f"tensor {self.name!r} has an invalid shape {self.shape!r}")
        if type(self.offset) is not int or self.offset < 0:
            raise ModelFormatError(f"tensor {self.name!r} has an invalid offset {self.offset!r}")
        expected = math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]
        if self.nbytes != expected:
            raise ModelFormatError(
                f"tensor {self.name!r} claims {self.nbytes} bytes but {self.dtype}{list(self.shape)} is {expected}"
            )
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ModelFormatError(f"tensor {self.name!r} has a malformed sha256 {self.sha256!r}")

    @property
    def end(self) -> int:
        """The byte offset just past this tensor's data."""
        return self.offset + self.nbytes


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything the store knows about one model directory.

    ``hf_config`` is a read-only deep copy of the Hugging Face ``config.json``;
    ``tensors`` maps tensor names to entries in the order their bytes lie in
    ``weights_file``. ``created_at`` is a Unix timestamp.
    """

    model_id: str
    name: str
    source: str
    source_format: SourceFormat
    hf_config: Mapping[str, Any]
    tensors: Mapping[str, TensorEntry]
    weights_file: str
    created_at: float

    def __post_init__(self) -> None:
        if not is_valid_model_id(self.model_id):
            raise ModelFormatError(
                f"invalid model id {self.model_id!r}", hint="ids are lowercase letters, digits and '-' (max 63)"
            )
        if self.source_format not in ("gguf", "hf"):
            raise ModelFormatError(f"unknown source format {self.source_format!r}", hint="expected 'gguf' or 'hf'")
        if (
            not self.weights_file
            or "/" in self.weights_file
            or "\\" in self.weights_file
            or self.weights_file in (".", "..")
        ):
            raise ModelFormatError(f"invalid weights file name {self.weights_file!r}")
        for name, entry in self.tensors.items():
            if name != entry.name:
                raise ModelFormatError(f"tensor key {name!r} does not match its entry name {entry.name!r}")
        spans = sorted((e.offset, e.end, e.name) for e in self.tensors.values())
        for (_, prev_end, prev), (start, _, cur) in zip(spans, spans[1:], strict=False):
            if start < prev_end:
                raise ModelFormatError(f"tensors {prev!r} and {cur!r} overlap in {self.weights_file}")
        object.__setattr__(self, "hf_config", freeze_json(self.hf_config))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    @property
    def total_bytes(self) -> int:
        """The sum of every tensor's size in bytes."""
        return sum(e.nbytes for e in self.tensors.values())

    def to_json(self) -> str:
        """Serialise to JSON text that :meth:`from_json` reads back to an equal manifest."""
        doc = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "model_id": self.model_id,
            "name": self.name,
            "source": self.source,
            "source_format": self.source_format,
            "created_at": self.created_at,
            "weights_file": self.weights_file,
            "hf_config": thaw_json(self.hf_config),
            "tensors": {
                e.name: {
                    "dtype": e.dtype,
                    "shape": list(e.shape),
                    "offset": e.offset,
                    "nbytes": e.nbytes,
                    "sha256": e.sha256,
                }
                for e in self.tensors.values()
            },
        }
        return json.dumps(doc, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and strictly validate manifest JSON; raise :class:`ModelFormatError` on any flaw."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"manifest is not valid JSON: {exc}", hint="re-import the model") from exc
        if not isinstance(doc, dict):
            raise ModelFormatError("manifest must be a JSON object", hint="re-import the model")
        if set(doc) != _MANIFEST_KEYS:
            missing, extra = sorted(_MANIFEST_KEYS - set(doc)), sorted(set(doc) - _MANIFEST_KEYS)
            raise ModelFormatError(
                f"manifest keys are wrong (missing {missing}, unexpected {extra})", hint="re-import the model"
            )
        if doc["format_version"] != MANIFEST_FORMAT_VERSION:
            raise ModelFormatError(
                f"manifest format version {doc['format_version']!r} is not {MANIFEST_FORMAT_VERSION}",
                hint="re-import the model with this version of Butterfly",
            )
        for key in ("model_id", "name", "source", "source_format", "weights_file"):
            if not isinstance(doc[key], str):
                raise ModelFormatError(f"manifest field {key!r} must be a string")
        if isinstance(doc["created_at"], bool) or not isinstance(doc["created_at"], (int, float)):
            raise ModelFormatError("manifest field 'created_at' must be a number")
        if not isinstance(doc["hf_config"], dict):
            raise ModelFormatError("manifest field 'hf_config' must be an object")
        if not isinstance(doc["tensors"], dict):
            raise ModelFormatError("manifest field 'tensors' must be an object")
        return cls(
            model_id=doc["model_id"],
            name=doc["name"],
            source=doc["source"],
            source_format=doc["source_format"],
            hf_config=doc["hf_config"],
            tensors={name: _entry_from_json(name, raw) for name, raw in doc["tensors"].items()},
            weights_file=doc["weights_file"],
            created_at=float(doc["created_at"]),
        )


def _entry_from_json(name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS:
        raise ModelFormatError(f"manifest entry for tensor {name!r} must be an object with keys {sorted(_ENTRY_KEYS)}")
    shape = raw["shape"]
    if not isinstance(shape, list) or any(type(d) is not int for d in shape):
        raise ModelFormatError(f"tensor {name!r} has an invalid shape {shape!r}")
    for key in ("offset", "nbytes"):
        if type(raw[key]) is not int:
            raise ModelFormatError(f"tensor {name!r} field {key!r} must be an integer")
    if not isinstance(raw["dtype"], str) or not isinstance(raw["sha256"], str):
        raise ModelFormatError(f"tensor {name!r} fields 'dtype' and 'sha256' must be strings")
    return TensorEntry(
        name=name,
        dtype=raw["dtype"],
        shape=tuple(shape),
        offset=raw["offset"],
        nbytes=raw["nbytes"],
        sha256=raw["sha256"],
    )
