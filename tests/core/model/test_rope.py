"""RoPE tables and rotation equal transformers' (Llama-3 scaling included), bit for bit in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from core.model.config import ModelConfig
from core.model.rope import RopeTable, apply_rope, inverse_frequencies

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _hf(rope: dict | None) -> LlamaConfig:
    return LlamaConfig(hidden_size=2048, num_attention_heads=16, num_key_value_heads=4, head_dim=128,
                       max_position_embeddings=131072, rope_parameters=rope)


@pytest.mark.parametrize("rope", [None, {"rope_type": "default", "rope_theta": 1e6}, LLAMA3])
def test_inverse_frequencies_equal_transformers(rope: dict | None) -> None:
    hf = _hf(rope)
    ours = ModelConfig.from_hf(hf.to_dict())
    got = inverse_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling)
    if rope is not None and rope["rope_type"] == "llama3":
        want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf)
        assert not torch.equal(got, inverse_frequencies(ours.head_dim, ours.rope_theta, None))
    else:
        want, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_equals_transformers(dtype: torch.dtype) -> None:
    hf = _hf(LLAMA3)
    config = ModelConfig.from_hf(hf.to_dict())
    table = RopeTable(config, dtype=dtype, device="cpu", initial_positions=4)
    table.ensure(300)  # grown on demand
    assert table.cos.shape[0] >= 300
    positions = torch.tensor([0, 1, 7, 150, 299])
    x = torch.randn(5, 16, 128, generator=torch.Generator().manual_seed(0)).to(dtype)
    cos, sin = LlamaRotaryEmbedding(hf)(x, positions[None])  # [1, T, D] in x's dtype
    want, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos, sin)
    got = apply_rope(x, table.cos[positions], table.sin[positions])
    assert torch.equal(got, want[0].transpose(0, 1))
