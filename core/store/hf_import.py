"""Reading a Hugging Face model directory (config, safetensors weights, tokenizer).

Weights must be safetensors, one file or sharded with ``model.safetensors.index.json``;
pickle checkpoints (``*.bin``) are refused. Tensor bytes are copied as stored, so
their hashes are those of the source's own bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import ModelFormatError
from core.store.safetensors_file import HeaderTensor, TensorSpec, read_header, store_dtype
from core.store.source import ModelSource, TensorSource

SUPPORTED_HF_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2")
"""``config.json`` ``model_type`` values the store accepts (the architectures the model runtime serves)."""

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers some old checkpoints saved that models recompute."""


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF directory, in a stable order (from the index when sharded)."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if (
            not isinstance(weight_map, dict)
            or not weight_map
            or not all(isinstance(v, str) for v in weight_map.values())
        ):
            raise ModelFormatError(f"{index} has no valid 'weight_map'")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name:
                raise ModelFormatError(f"{index} names a weight file outside the directory: {name!r}")
        return [path / name for name in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            raise ModelFormatError(
                f"{path} holds only pickle checkpoints ({', '.join(pickled[:3])}); Butterfly never loads pickle",
                hint="convert the weights to safetensors (e.g. save_pretrained(..., safe_serialization=True))",
            )
        raise ModelFormatError(f"{path} has no *.safetensors weights", hint="pass a Hugging Face model directory")
    return files


def source_files(path: Path) -> list[tuple[str, Path]]:
    """Every file of an HF directory that affects the stored model, labelled by name, for fingerprinting."""
    _require_config(path)
    names = ["config.json", "generation_config.json", INDEX_FILE, *TOKENIZER_FILES]
    files = [(name, path / name) for name in names if (path / name).is_file()]
    return files + [(p.name, p) for p in weight_files(path)]


def open_hf_dir(path: Path) -> ModelSource:
    """Read an HF directory's config, tokenizer and safetensors headers; tensors are read lazily.

    Raises :class:`ModelFormatError` for a missing ``config.json`` or ``tokenizer.json``, an
    unsupported ``model_type``, pickle-only weights, corrupt safetensors, an index naming
    tensors its shards lack, or tensor dtypes other than float32/bfloat16/float16.
    """
    config = _require_config(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_HF_MODEL_TYPES:
        raise ModelFormatError(
            f"model architecture {model_type!r} is not supported",
            hint=f"supported model_type values: {', '.join(SUPPORTED_HF_MODEL_TYPES)}",
        )
    sources: dict[str, TensorSource] = {}
    for file in weight_files(path):
        for tensor in _read_file_header(file).values():
            if tensor.name.endswith(_IGNORED_SUFFIXES):
                continue
            if tensor.name in sources:
                raise ModelFormatError(f"tensor {tensor.name!r} appears in more than one weight file of {path}")
            dtype = store_dtype(tensor.dtype)
            if dtype is None:
                raise ModelFormatError(
                    f"tensor {tensor.name!r} in {file.name} has dtype {tensor.dtype}",
                    hint="only float32, bfloat16 and float16 weights are supported",
                )
            sources[tensor.name] = TensorSource(TensorSpec(tensor.name, dtype, tensor.shape), _reader(file, tensor))
    _check_index(path, sources)
    tokenizer_json, tokenizer_config = _read_tokenizer(path)
    generation = path / "generation_config.json"
    return ModelSource(
        source_format="hf",
        hf_config=config,
        tokenizer_json=tokenizer_json,
        tokenizer_config=tokenizer_config,
        generation_config=_read_json(generation) if generation.is_file() else None,
        tensors=tuple(sources.values()),
    )


def _require_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise ModelFormatError(f"{path} is not a directory", hint="pass a .gguf file or a Hugging Face model directory")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelFormatError(f"{path} has no config.json", hint="pass a Hugging Face model directory")
    return _read_json(config_path)


def _read_file_header(file: Path) -> dict[str, HeaderTensor]:
    try:
        with file.open("rb") as f:
            return read_header(f, file.stat().st_size, source=str(file))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"weight file {file} is missing") from exc


def _check_index(path: Path, sources: dict[str, TensorSource]) -> None:
    index = path / INDEX_FILE
    if not index.is_file():
        return
    weight_map = _read_json(index)["weight_map"]
    absent = sorted(name for name in weight_map if name not in sources and not name.endswith(_IGNORED_SUFFIXES))
    if absent:
        raise ModelFormatError(f"{index.name} lists tensors no shard holds: {absent[:4]}")


def _reader(file: Path, tensor: HeaderTensor) -> Callable[[], bytes]:
    def load() -> bytes:
        with file.open("rb") as f:
            f.seek(tensor.start)
            data = f.read(tensor.end - tensor.start)
        if len(data) != tensor.end - tensor.start:
            raise ModelFormatError(f"{file} is truncated inside tensor {tensor.name!r}")
        return data

    return load


def _read_tokenizer(path: Path) -> tuple[str, dict[str, Any]]:
    tokenizer_path = path / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelFormatError(
            f"{path} has no tokenizer.json",
            hint="save the tokenizer with a fast (tokenizers) backend into the directory",
        )
    tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
    config_path = path / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    if not config.get("chat_template"):
        jinja, as_json = path / "chat_template.jinja", path / "chat_template.json"
        if jinja.is_file():
            config["chat_template"] = jinja.read_text(encoding="utf-8")
        elif as_json.is_file():
            template = _read_json(as_json).get("chat_template")
            if template:
                config["chat_template"] = template
    return tokenizer_json, config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return value
