"""Manifest round trips and strict validation of untrusted manifest JSON."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from core.errors import ModelFormatError
from core.store.manifest import Manifest, TensorEntry

SHA = "ab" * 32


def make_manifest(**overrides: Any) -> Manifest:
    tensors = {
        "a": TensorEntry("a", "float32", (2, 3), 64, 24, SHA),
        "b": TensorEntry("b", "bfloat16", (4,), 88, 8, "cd" * 32),
    }
    fields: dict[str, Any] = dict(
        model_id="tiny-0123456789ab",
        name="Tiny",
        source="/models/tiny.gguf",
        source_format="gguf",
        hf_config={"model_type": "llama", "rope_scaling": {"factor": 2.0}, "eos_token_id": [1, 2]},
        tensors=tensors,
        weights_file="model.safetensors",
        created_at=1700000000.5,
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_json_round_trip_is_exact() -> None:
    manifest = make_manifest()
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert list(again.tensors) == ["a", "b"]
    assert again.tensors["a"].shape == (2, 3)
    assert again.total_bytes == 32


def test_manifest_is_deeply_read_only() -> None:
    config = {"rope_scaling": {"factor": 2.0}}
    manifest = make_manifest(hf_config=config)
    config["rope_scaling"]["factor"] = 9.0  # the caller's dict is copied, not aliased
    assert manifest.hf_config["rope_scaling"]["factor"] == 2.0
    with pytest.raises(TypeError):
        manifest.hf_config["model_type"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        manifest.hf_config["rope_scaling"]["factor"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        manifest.tensors["c"] = manifest.tensors["a"]  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        manifest.name = "other"  # type: ignore[misc]


def _mutated(mutate: Any) -> str:
    doc = json.loads(make_manifest().to_json())
    mutate(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("tensors"),
        lambda d: d.update(extra=1),
        lambda d: d.update(format_version=99),
        lambda d: d.update(model_id="../escape"),
        lambda d: d.update(model_id="UPPER-case"),
        lambda d: d.update(source_format="onnx"),
        lambda d: d.update(weights_file="../model.safetensors"),
        lambda d: d.update(created_at="yesterday"),
        lambda d: d.update(hf_config=[1]),
        lambda d: d["tensors"]["a"].update(sha256="xyz"),
        lambda d: d["tensors"]["a"].update(sha256=SHA.upper()),
        lambda d: d["tensors"]["a"].update(dtype="int8"),
        lambda d: d["tensors"]["a"].update(nbytes=25),
        lambda d: d["tensors"]["a"].update(shape=[2, -3]),
        lambda d: d["tensors"]["a"].update(shape=[2.0, 3]),
        lambda d: d["tensors"]["a"].update(offset=-1),
        lambda d: d["tensors"]["a"].update(offset=True),
        lambda d: d["tensors"]["a"].pop("sha256"),
        lambda d: d["tensors"]["a"].update(offset=80),  # overlaps "b"
        lambda d: d["tensors"].update(c=[1, 2]),
    ],
)
def test_from_json_rejects_malformed_manifests(mutate: Any) -> None:
    with pytest.raises(ModelFormatError):
        Manifest.from_json(_mutated(mutate))


@pytest.mark.parametrize("text", ["", "not json", "[]", "null", b"\xff\xfe"])
def test_from_json_rejects_non_objects(text: str | bytes) -> None:
    with pytest.raises(ModelFormatError):
        Manifest.from_json(text)


def test_entry_key_must_match_entry_name() -> None:
    entry = TensorEntry("a", "float32", (1,), 0, 4, SHA)
    with pytest.raises(ModelFormatError):
        make_manifest(tensors={"b": entry})
    assert replace(entry, offset=4).end == 8
