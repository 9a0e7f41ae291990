"""Tiny random Hugging Face models used as the reference oracle for the model runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from core.model.config import ModelConfig

_COMMON: dict[str, Any] = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
}

VARIANTS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2_bias": (Qwen2Config, Qwen2ForCausalLM, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    "llama3_rope": (LlamaConfig, LlamaForCausalLM, {"rope_parameters": _LLAMA3_ROPE}),
    "tied": (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": True}),
    "mistral_window": (MistralConfig, MistralForCausalLM, {"sliding_window": 6}),
}


@dataclass(frozen=True, slots=True)
class TinyModel:
    """A saved random model: the transformers reference, our config of it, and its directory."""

    name: str
    hf: torch.nn.Module
    config: ModelConfig
    path: Path


def build(name: str, path: Path, *, seed: int = 0) -> TinyModel:
    """Build variant ``name`` with well-spread random weights (peaked attention) and save it to ``path``."""
    config_cls, model_cls, extra = VARIANTS[name]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**_COMMON, **extra)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in pname else 0.15 * noise)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    cfg = ModelConfig.from_hf(json.loads((path / "config.json").read_text()))
    return TinyModel(name, model, cfg, path)


def reference_states(model: torch.nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """HF hidden states (``[i]`` is the input of layer ``i``; ``[-1]`` is *normed*) and logits, batch dim removed."""
    with torch.no_grad():
        out = model(ids[None], output_hidden_states=True)
    return [h[0] for h in out.hidden_states], out.logits[0].float()
