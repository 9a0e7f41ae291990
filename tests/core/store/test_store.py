"""ModelStore and StoredModel: lookup, listing, zero-copy bytes, verification, atomic and safe writes."""

from __future__ import annotations

import errno
import json
import mmap
from collections import namedtuple
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import platformdirs
import pytest
import torch
from tokenizers import Tokenizer

from core.errors import ModelFormatError, StoreError
from core.store import store as store_module
from core.store.manifest import TensorEntry
from core.store.safetensors_file import TensorSpec
from core.store.store import ModelStore, StoredModel
from tests.core.store.builders import tiny_model, tiny_tokenizer, write_hf_dir


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer: Tokenizer = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=tokenizer.get_vocab_size(), seed=4)
    return write_hf_dir(tmp_path_factory.mktemp("src") / "tiny", model, tokenizer)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def test_default_root_is_the_user_cache_dir() -> None:
    assert ModelStore().root == Path(platformdirs.user_cache_dir("butterfly")) / "models"


def test_get_and_list(store: ModelStore, source: Path) -> None:
    assert store.list() == []
    stored = store.import_path(source, name="My Model!")
    assert stored.model_id.startswith("my-model-") and len(stored.model_id) == len("my-model-") + 12
    assert [m.model_id for m in store.list()] == [stored.model_id]
    assert store.get(stored.model_id).manifest == stored.manifest
    for bad in ("nope-000000000000", "../models", "", "A"):
        with pytest.raises(StoreError, match="no model"):
            store.get(bad)
    files = sorted(p.name for p in stored.path.iterdir())
    assert files == [
        "config.json",
        "generation_config.json",
        "manifest.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


def test_tensor_bytes_are_a_read_only_mmap_slice(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    name = "model.layers.1.self_attn.q_proj.weight"
    data = stored.tensor_bytes(name)
    assert isinstance(data.obj, mmap.mmap) and data.readonly
    with pytest.raises(TypeError):
        data[0] = 1  # type: ignore[index]
    tensor = stored.tensor(name)
    tensor.zero_()  # a private copy: the store is untouched
    assert stored.tensor(name).abs().sum() > 0
    assert stored.tensor(name, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(StoreError, match="no tensor"):
        stored.tensor_bytes("model.layers.7.mlp.up_proj.weight")


def test_config_is_parsed_by_the_model_runtime(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    assert stored.config.num_layers == 2
    assert stored.config.num_kv_heads == 2
    assert stored.hf_config is not stored.hf_config  # fresh copies: callers may mutate them


def test_verify_names_the_tensor_whose_hash_is_wrong(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    manifest = json.loads((stored.path / "manifest.json").read_text())
    manifest["tensors"]["model.layers.0.mlp.down_proj.weight"]["sha256"] = "0" * 64
    (stored.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"model\.layers\.0\.mlp\.down_proj\.weight"):
        store.get(stored.model_id).verify()


def test_verify_detects_corrupted_weight_bytes(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    entry = stored.manifest.tensors["model.norm.weight"]
    stored.close()
    with (stored.path / "model.safetensors").open("r+b") as f:
        f.seek(entry.offset + 5)
        f.write(b"\x7f")
    with pytest.raises(StoreError, match=r"'model\.norm\.weight'"):
        store.get(stored.model_id).verify()


def test_damaged_model_is_replaced_on_reimport(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    stored.close()
    (stored.path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="damaged|invalid"):
        store.get(stored.model_id)
    again = store.import_path(source)
    assert again.model_id == stored.model_id
    again.verify()


def test_list_skips_damaged_manifests(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    (store.root / "broken-000000000000").mkdir()
    (store.root / "broken-000000000000" / "manifest.json").write_text("{not json")
    assert [m.model_id for m in store.list()] == [stored.model_id]


def test_disk_full_before_writing(store: ModelStore, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(StoreError, match="disk full") as info:
        store.import_path(source)
    assert info.value.hint and "free disk space" in info.value.hint


def test_disk_full_while_writing_leaves_nothing_behind(
    store: ModelStore, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "write_tensors", full)
    with pytest.raises(StoreError, match="disk full"):
        store.import_path(source)
    assert list(store.root.iterdir()) == []


def test_failed_conversion_leaves_nothing_behind(
    store: ModelStore, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_module.write_tensors

    def failing(out: BinaryIO, specs: Sequence[TensorSpec], load: Callable[[TensorSpec], bytes]) -> list[TensorEntry]:
        def load_or_fail(spec: TensorSpec) -> bytes:
            if spec.name.startswith("model.layers.1."):
                raise ModelFormatError("boom in the middle")
            return load(spec)

        return real(out, specs, load_or_fail)

    monkeypatch.setattr(store_module, "write_tensors", failing)
    with pytest.raises(ModelFormatError, match="boom"):
        store.import_path(source)
    assert list(store.root.iterdir()) == []


def test_missing_source_and_runtime_unsupported_config(store: ModelStore, source: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        store.import_path(tmp_path / "missing.gguf")
    copy = tmp_path / "gelu"
    copy.mkdir()
    for file in source.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["hidden_act"] = "gelu"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="hidden_act"):
        store.import_path(copy)
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_stored_model_refuses_a_manifest_that_disagrees_with_the_file(store: ModelStore, source: Path) -> None:
    stored = store.import_path(source)
    manifest = json.loads((stored.path / "manifest.json").read_text())
    entry = manifest["tensors"].pop("model.norm.weight")
    manifest["tensors"]["model.other.weight"] = entry
    (stored.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="disagree"):
        StoredModel.open(stored.path)
