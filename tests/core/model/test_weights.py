"""Tensor names and shapes of a stage agree with real transformers checkpoints."""

from __future__ import annotations

import pytest
import torch

from core.errors import ModelFormatError, ShardLoadFailed
from core.model.weights import expected_shape, layer_tensor_names, pick_shard_tensors, shard_tensor_names
from core.types import LayerRange
from tests.core.model.tiny_models import TinyModel


def test_names_and_shapes_cover_the_checkpoint_exactly(tiny: TinyModel) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny.path / "model.safetensors"), framework="pt") as f:
        saved = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    whole = shard_tensor_names(tiny.config, LayerRange(0, 4, 4))
    assert sorted(whole) == sorted(saved)
    assert len(whole) == len(set(whole))
    for name in whole:
        assert expected_shape(tiny.config, name) == saved[name], name
    params = sum(torch.Size(saved[n]).numel() for n in layer_tensor_names(tiny.config, 2))
    assert params == tiny.config.layer_param_count


def test_stage_names_by_position(tiny: TinyModel) -> None:
    cfg = tiny.config
    middle = shard_tensor_names(cfg, LayerRange(1, 3, 4))
    assert middle == layer_tensor_names(cfg, 1) + layer_tensor_names(cfg, 2)
    first = shard_tensor_names(cfg, LayerRange(0, 1, 4))
    assert first[0] == "model.embed_tokens.weight" and "model.norm.weight" not in first
    last = shard_tensor_names(cfg, LayerRange(3, 4, 4))
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    assert last[-2:] == ["model.norm.weight", head]
    qwen_bias = "model.layers.1.self_attn.q_proj.bias"
    assert (qwen_bias in middle) == (cfg.architecture == "qwen2")


def test_unknown_names_and_bad_ranges_are_refused(llama: TinyModel) -> None:
    with pytest.raises(ModelFormatError, match="q_proj.bias"):
        expected_shape(llama.config, "model.layers.0.self_attn.q_proj.bias")
    with pytest.raises(ModelFormatError):
        expected_shape(llama.config, "model.layers.4.mlp.up_proj.weight")
    with pytest.raises(ValueError):
        shard_tensor_names(llama.config, LayerRange(0, 2, 5))
    with pytest.raises(ShardLoadFailed, match=r"model\.layers\.1\.input_layernorm\.weight is missing"):
        pick_shard_tensors(llama.config, LayerRange(1, 2, 4), {})
