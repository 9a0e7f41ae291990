"""GGUF import on tiny GGUF files written here from known weights (llama.cpp's own layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer

from core.errors import ModelFormatError
from core.store.gguf_import import hf_tensor_name, llama3_rope_factors, unpermute_rope_rows
from core.store.store import ModelStore
from tests.core.store.builders import (
    CORPUS,
    expected_gguf_value,
    llama_cpp_permute,
    tiny_model,
    tiny_tokenizer,
    write_gguf,
)

TEXTS = [*CORPUS[:5], "", "  ", "emoji 🦋 and 你好", "<|im_start|>user\nhi<|im_end|>", "x=12345;\ty = x ** 2"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer: Tokenizer) -> torch.nn.Module:
    return tiny_model("llama", vocab_size=tokenizer.get_vocab_size())


def mixed_types(name: str) -> Q:
    if "embed_tokens" in name:
        return Q.Q8_0
    if "q_proj" in name:
        return Q.F16
    if "k_proj" in name:
        return Q.BF16
    if "mlp" in name:
        return Q.Q4_1 if "layers.0." in name else Q.Q5_0 if "down" in name else Q.Q4_0
    return Q.F32


def test_f32_gguf_restores_the_original_weights_exactly(
    tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer
) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", llama, tokenizer)
    stored = ModelStore(tmp_path / "store").import_path(path)
    original = llama.state_dict()
    assert set(stored.manifest.tensors) == set(original) - {"lm_head.weight"}
    for name, entry in stored.manifest.tensors.items():
        assert entry.dtype == "float32"
        assert torch.equal(stored.tensor(name), original[name]), name
    config = stored.hf_config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (2, 4, 2)
    assert (config["hidden_size"], config["intermediate_size"], config["head_dim"]) == (64, 128, 16)
    assert config["vocab_size"] == tokenizer.get_vocab_size()
    assert config["tie_word_embeddings"] is True and config["rope_scaling"] is None
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    stored.verify()


def test_float_types_are_kept_and_quantized_ones_dequantized(
    tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer
) -> None:
    path = write_gguf(tmp_path / "mixed.gguf", llama, tokenizer, qtype_for=mixed_types)
    stored = ModelStore(tmp_path / "store").import_path(path)
    expected_dtype = {Q.F16: "float16", Q.BF16: "bfloat16"}
    for name, tensor in llama.state_dict().items():
        if name == "lm_head.weight":
            continue
        qtype = mixed_types(name)
        assert stored.manifest.tensors[name].dtype == expected_dtype.get(qtype, "float32"), name
        assert torch.equal(stored.tensor(name), expected_gguf_value(tensor, qtype)), name


def test_matches_transformers_loading_the_same_gguf(
    tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer
) -> None:
    from transformers import AutoModelForCausalLM

    path = write_gguf(tmp_path / "mixed.gguf", llama, tokenizer, qtype_for=mixed_types)
    stored = ModelStore(tmp_path / "store").import_path(path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    reference_state = reference.state_dict()
    for name in stored.manifest.tensors:
        assert torch.equal(stored.tensor(name, dtype=torch.float32), reference_state[name]), name
    ours = AutoModelForCausalLM.from_pretrained(stored.path, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 70, 200, 3]])
    torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_untied_output_becomes_lm_head(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = tiny_model("llama", vocab_size=tokenizer.get_vocab_size(), tie=False, seed=1)
    stored = ModelStore(tmp_path / "store").import_path(write_gguf(tmp_path / "untied.gguf", model, tokenizer))
    assert stored.hf_config["tie_word_embeddings"] is False
    assert torch.equal(stored.tensor("lm_head.weight"), model.state_dict()["lm_head.weight"])


def test_qwen2_keeps_biases_and_is_not_unpermuted(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = tiny_model("qwen2", vocab_size=tokenizer.get_vocab_size(), seed=2)
    stored = ModelStore(tmp_path / "store").import_path(write_gguf(tmp_path / "q.gguf", model, tokenizer, arch="qwen2"))
    assert stored.hf_config["architectures"] == ["Qwen2ForCausalLM"]
    for name, tensor in model.state_dict().items():
        if name != "lm_head.weight":
            assert torch.equal(stored.tensor(name), tensor), name
    assert "model.layers.1.self_attn.k_proj.bias" in stored.manifest.tensors


def test_tokenizer_rebuilt_from_metadata_matches_the_original(
    tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer
) -> None:
    stored = ModelStore(tmp_path / "store").import_path(write_gguf(tmp_path / "t.gguf", llama, tokenizer))
    ours = stored.tokenizer()
    for text in TEXTS:
        assert ours.encode(text) == tokenizer.encode(text).ids, text
        assert ours.decode(ours.encode(text)) == tokenizer.decode(tokenizer.encode(text).ids), text
    assert ours.encode("<|im_end|>") == [2]
    assert ours.eos_token_ids == (2,) and ours.bos_token_id == 1
    assert stored.manifest.tensors  # and the chat template travelled through the file
    rendered = ours.apply_chat_template([{"role": "user", "content": "hi"}])
    assert rendered == (
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_rope_freqs_become_rope_scaling(tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer) -> None:
    factors = llama3_rope_factors(16, 10000.0, 8.0, 1.0, 4.0, 64).astype(np.float32)
    assert len(set(factors.tolist())) > 2  # the test spans all three regimes
    path = write_gguf(
        tmp_path / "l3.gguf",
        llama,
        tokenizer,
        rope_original_context=64,
        extra_tensors={"rope_freqs.weight": (factors, Q.F32)},
    )
    stored = ModelStore(tmp_path / "store").import_path(path)
    assert stored.hf_config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    assert "rope_freqs.weight" not in stored.manifest.tensors

    scrambled = factors[::-1].copy()
    bad = write_gguf(
        tmp_path / "bad.gguf",
        llama,
        tokenizer,
        rope_original_context=64,
        extra_tensors={"rope_freqs.weight": (scrambled, Q.F32)},
    )
    with pytest.raises(ModelFormatError, match="rope"):
        ModelStore(tmp_path / "store2").import_path(bad)


@pytest.mark.parametrize(("rows", "cols", "heads"), [(64, 8, 4), (32, 64, 2), (16, 1, 8), (12, 0, 3)])
def test_unpermute_inverts_llama_cpp_permutation(rows: int, cols: int, heads: int) -> None:
    weights = np.arange(rows * max(cols, 1), dtype=np.float32).reshape(rows, max(cols, 1))
    assert np.array_equal(unpermute_rope_rows(llama_cpp_permute(weights, heads), heads), weights)
    bias = np.arange(rows, dtype=np.float32)
    assert np.array_equal(unpermute_rope_rows(llama_cpp_permute(bias, heads), heads), bias)
    with pytest.raises(ModelFormatError):
        unpermute_rope_rows(np.zeros((rows + 1, 2), dtype=np.float32), heads)


def test_tensor_names_map_to_hugging_face() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    with pytest.raises(ModelFormatError, match="ffn_gate_exps"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")


# --- bad inputs -------------------------------------------------------------------------------


def test_truncated_gguf_is_a_clear_format_error(tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer) -> None:
    data = write_gguf(tmp_path / "full.gguf", llama, tokenizer).read_bytes()
    for cut in (len(data) - 1000, len(data) // 2, 200, 6):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="corrupt or truncated|not a GGUF"):
            ModelStore(tmp_path / f"store{cut}").import_path(tmp_path / "cut.gguf")
    assert not any((tmp_path / f"store{len(data) - 1000}").glob("*/manifest.json"))


def test_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        ModelStore(tmp_path / "store").import_path(tmp_path / "model.gguf")


def test_unsupported_architecture_is_named(tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer) -> None:
    path = write_gguf(tmp_path / "m.gguf", llama, tokenizer, arch="mamba")
    with pytest.raises(ModelFormatError, match="'mamba'"):
        ModelStore(tmp_path / "store").import_path(path)


def test_unsupported_quantization_is_named(tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer) -> None:
    def types(name: str) -> Q:
        return Q.Q8_1 if name.endswith("mlp.up_proj.weight") else Q.F32

    path = write_gguf(tmp_path / "q81.gguf", llama, tokenizer, qtype_for=types)
    with pytest.raises(ModelFormatError, match="Q8_1"):
        ModelStore(tmp_path / "store").import_path(path)


def test_unsupported_tokenizer_type_is_named(tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer) -> None:
    path = write_gguf(tmp_path / "spm.gguf", llama, tokenizer, tokenizer_model="bert")
    with pytest.raises(ModelFormatError, match="'bert'"):
        ModelStore(tmp_path / "store").import_path(path)


def test_unknown_tensor_is_named(tmp_path: Path, llama: torch.nn.Module, tokenizer: Tokenizer) -> None:
    extra = {"blk.0.ffn_gate_exps.weight": (np.zeros((4, 64), dtype=np.float32), Q.F32)}
    path = write_gguf(tmp_path / "moe.gguf", llama, tokenizer, extra_tensors=extra)
    with pytest.raises(ModelFormatError, match="ffn_gate_exps"):
        ModelStore(tmp_path / "store").import_path(path)
    shutil.rmtree(tmp_path / "store", ignore_errors=True)
