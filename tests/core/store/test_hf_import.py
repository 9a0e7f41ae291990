"""Importing Hugging Face directories: single-file and sharded safetensors, and bad directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from core.errors import ModelFormatError
from core.store.store import ModelStore, tensor_sha256
from tests.core.store.builders import CORPUS, tiny_model, tiny_tokenizer, write_hf_dir


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> torch.nn.Module:
    return tiny_model("llama", vocab_size=tokenizer.get_vocab_size(), seed=3)


def _source_bytes(directory: Path) -> dict[str, bytes]:
    """Every tensor's raw bytes as the source safetensors files hold them."""
    out = {}
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name).contiguous()
                out[name] = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    return out


@pytest.mark.parametrize("max_shard_size", [None, "40KB"])
def test_import_keeps_source_bytes_and_hashes(
    tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer, max_shard_size: str | None
) -> None:
    source = write_hf_dir(tmp_path / "tiny-llama", model, tokenizer, max_shard_size=max_shard_size)
    shards = list(source.glob("*.safetensors"))
    assert (len(shards) > 1) == (max_shard_size is not None)
    stored = ModelStore(tmp_path / "store").import_path(source)
    expected = _source_bytes(source)
    assert set(stored.manifest.tensors) == set(expected)
    for name, data in expected.items():
        entry = stored.manifest.tensors[name]
        assert bytes(stored.tensor_bytes(name)) == data, name
        assert entry.sha256 == tensor_sha256(data)
        assert torch.equal(stored.tensor(name), model.state_dict()[name])
    assert stored.manifest.source_format == "hf"
    assert stored.model_id.startswith("tiny-llama-")
    assert stored.hf_config["num_hidden_layers"] == 2
    stored.verify()


def test_stored_dir_is_a_working_hugging_face_directory(
    tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = write_hf_dir(tmp_path / "src", model, tokenizer, max_shard_size="40KB")
    stored = ModelStore(tmp_path / "store").import_path(source, name="Tiny Llama")
    loaded = AutoModelForCausalLM.from_pretrained(stored.path, dtype=torch.float32)
    ids = torch.tensor([[1, 7, 99, 250]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    hf_tokenizer = AutoTokenizer.from_pretrained(stored.path)
    ours = stored.tokenizer()
    for text in CORPUS[:5]:
        assert ours.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text).ids
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    assert ours.apply_chat_template(messages) == hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.eos_token_ids == (2,)


def test_same_source_same_id_and_changed_source_new_id(
    tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer
) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    store = ModelStore(tmp_path / "store", clock=lambda: 1234.0)
    first = store.import_path(source)
    assert store.import_path(source).model_id == first.model_id
    assert first.manifest.created_at == 1234.0
    config = json.loads((source / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (source / "config.json").write_text(json.dumps(config))
    changed = store.import_path(source)
    assert changed.model_id != first.model_id
    assert {m.model_id for m in store.list()} == {first.model_id, changed.model_id}


def test_chat_template_from_jinja_file_is_kept(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    (source / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    stored = ModelStore(tmp_path / "store").import_path(source)
    assert stored.tokenizer().apply_chat_template([{"role": "user", "content": "x"}]) == "[user]x"


# --- bad inputs -------------------------------------------------------------------------------


def test_dir_without_config_is_rejected(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    (source / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="no config.json"):
        ModelStore(tmp_path / "store").import_path(source)


def test_dir_without_tokenizer_is_rejected(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    (source / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        ModelStore(tmp_path / "store").import_path(source)


def test_unsupported_architecture_is_named(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "mamba"
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="'mamba'"):
        ModelStore(tmp_path / "store").import_path(source)


def test_pickle_checkpoints_are_refused(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    (source / "model.safetensors").unlink()
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelFormatError, match="pickle"):
        ModelStore(tmp_path / "store").import_path(source)


def test_integer_weights_are_refused(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(128, 64, dtype=torch.int8)
    save_file(state, str(source / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match=r"up_proj.*I8"):
        ModelStore(tmp_path / "store").import_path(source)


def test_index_naming_absent_tensors_is_rejected(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer, max_shard_size="40KB")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = next(iter(index["weight_map"].values()))
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="layers.9"):
        ModelStore(tmp_path / "store").import_path(source)


def test_truncated_shard_is_rejected(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
    source = write_hf_dir(tmp_path / "src", model, tokenizer)
    data = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ModelFormatError, match="truncated"):
        ModelStore(tmp_path / "store").import_path(source)
