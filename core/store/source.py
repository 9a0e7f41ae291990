"""What an importer hands the store: a model ready to be written, tensor by tensor.

Importers (GGUF, Hugging Face directories) turn a source into a :class:`ModelSource`
whose tensors are loaded lazily, so the store can write them one at a time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.store.manifest import SourceFormat
from core.store.safetensors_file import TensorSpec

CONVERTER_VERSION = 1
"""Part of every source fingerprint: bumping it gives every source a new model id."""

_HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TensorSource:
    """One tensor to store: its spec and a function returning its little-endian bytes."""

    spec: TensorSpec
    load: Callable[[], bytes | memoryview]


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model converted to Hugging Face form, its tensors not yet read.

    ``hf_config`` is the ``config.json`` content; ``tokenizer_json`` the text of
    ``tokenizer.json``; ``tokenizer_config`` the ``tokenizer_config.json`` content
    (with ``chat_template`` when the model has one); ``generation_config`` the
    ``generation_config.json`` content when the source has one.
    """

    source_format: SourceFormat
    hf_config: Mapping[str, Any]
    tokenizer_json: str
    tokenizer_config: Mapping[str, Any]
    generation_config: Mapping[str, Any] | None
    tensors: tuple[TensorSource, ...]


def fingerprint_files(files: Sequence[tuple[str, Path]]) -> str:
    """A sha256 hex digest over the converter version and each ``(label, path)``'s label and bytes."""
    digest = hashlib.sha256(f"butterfly-store/{CONVERTER_VERSION}\n".encode())
    for label, path in files:
        digest.update(f"{label}\n{path.stat().st_size}\n".encode())
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def slugify(name: str, *, max_len: int = 40) -> str:
    """A short lowercase ``[a-z0-9-]`` form of ``name`` (``"model"`` when nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "model"


def model_id_for(name: str, fingerprint: str) -> str:
    """The store id of a model: the slug of its name and 12 hex characters of its source's fingerprint."""
    return f"{slugify(name)}-{fingerprint[:12]}"
