"""ModelConfig reads old and new config.json spellings, refuses what it cannot run, and writes loadable configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from core.errors import ModelFormatError
from core.model.config import ModelConfig, RopeScaling
from core.types import LayerRange
from tests.core.model.tiny_models import TinyModel

# Abbreviated real config.json files (transformers 4.x spelling).
LLAMA_32_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 128256,
}
QWEN25_05B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
    "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}
MISTRAL_7B_V01: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000,
}


def test_reads_real_configs() -> None:
    llama = ModelConfig.from_hf(LLAMA_32_1B)
    assert llama.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert (llama.num_kv_heads, llama.head_dim, llama.eos_token_ids) == (8, 64, (128001, 128008, 128009))
    qwen = ModelConfig.from_hf(QWEN25_05B)
    assert qwen.attention_bias and qwen.tie_word_embeddings and qwen.sliding_window is None
    assert (qwen.head_dim, qwen.rope_theta, qwen.eos_token_ids) == (64, 1e6, (151643,))
    mistral = ModelConfig.from_hf(MISTRAL_7B_V01)
    assert mistral.sliding_window == 4096 and not mistral.attention_bias


def test_old_and_new_rope_spellings_agree() -> None:
    new = dict(LLAMA_32_1B)
    del new["rope_theta"], new["rope_scaling"]
    new["rope_parameters"] = {**LLAMA_32_1B["rope_scaling"], "rope_theta": 500000.0}
    legacy = {**LLAMA_32_1B, "rope_scaling": {**LLAMA_32_1B["rope_scaling"], "type": "llama3"}}
    del legacy["rope_scaling"]["rope_type"]
    assert ModelConfig.from_hf(new) == ModelConfig.from_hf(LLAMA_32_1B) == ModelConfig.from_hf(legacy)
    assert ModelConfig.from_hf({**QWEN25_05B, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) \
        == ModelConfig.from_hf(QWEN25_05B)


def test_reads_what_transformers_5_writes(tiny: TinyModel) -> None:
    saved = json.loads((tiny.path / "config.json").read_text())
    assert "rope_parameters" in saved
    assert ModelConfig.from_hf(tiny.hf.config.to_dict()) == tiny.config
    assert tiny.config.architecture == saved["model_type"]


@pytest.mark.parametrize(("change", "field"), [
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling: rope_type 'yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 4.0}}, "rope_scaling lacks a valid llama3"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"hidden_size": None}, "hidden_size"),
    ({"num_key_value_heads": 5}, "num_key_value_heads"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_refuses_unsupported_fields_by_name(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelFormatError, match=field.replace("(", r"\(")):
        ModelConfig.from_hf({**LLAMA_32_1B, **change})


def test_refuses_qwen2_per_layer_sliding_window() -> None:
    with pytest.raises(ModelFormatError, match="use_sliding_window"):
        ModelConfig.from_hf({**QWEN25_05B, "use_sliding_window": True, "max_window_layers": 12})
    assert ModelConfig.from_hf({**QWEN25_05B, "use_sliding_window": True}).sliding_window is None  # no layer slides


def test_architecture_from_class_name_when_model_type_missing() -> None:
    cfg = dict(MISTRAL_7B_V01)
    del cfg["model_type"]
    assert ModelConfig.from_hf(cfg).architecture == "mistral"


@pytest.mark.parametrize("source", [LLAMA_32_1B, QWEN25_05B, MISTRAL_7B_V01])
def test_to_hf_is_loadable_by_transformers(tmp_path: Path, source: dict[str, Any]) -> None:
    ours = ModelConfig.from_hf(source)
    (tmp_path / "config.json").write_text(json.dumps(ours.to_hf()))
    hf = AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == source["architectures"][0].replace("ForCausalLM", "Config")
    assert ModelConfig.from_hf(hf.to_dict()) == ours
    small = dataclasses.replace(ours, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=16, vocab_size=100)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**small.to_hf()))
    from core.model.weights import expected_shape, shard_tensor_names

    names = shard_tensor_names(small, LayerRange(0, 2, 2))
    state = model.state_dict()
    assert {n for n in state if not (small.tie_word_embeddings and n == "lm_head.weight")} == set(names)
    assert all(tuple(state[n].shape) == expected_shape(small, n) for n in names)


def test_model_spec_sizes(tiny: TinyModel) -> None:
    spec = tiny.config.model_spec(name="tiny", dtype=torch.bfloat16, context_tokens=512, concurrency=2)
    layer0 = sum(p.numel() for n, p in tiny.hf.named_parameters() if n.startswith("model.layers.0."))
    assert spec.layer_bytes == 2 * layer0
    assert spec.embed_bytes == 2 * 256 * 64
    assert spec.head_bytes == 2 * (64 + 256 * 64)
    assert spec.kv_bytes_per_token_layer == 2 * 2 * 2 * 16
    assert spec.activation_bytes == 2 * 64
    assert (spec.num_layers, spec.context_tokens, spec.concurrency) == (4, 512, 2)
