"""Which Hugging Face tensors a shard needs, and their shapes.

Names follow the Hugging Face checkpoint layout (``model.layers.3.self_attn.q_proj.weight``),
which is also what the model store produces when it converts a GGUF file.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from core.errors import ModelFormatError, ShardLoadFailed
from core.model.config import ModelConfig
from core.types import LayerRange

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
_RELOAD_HINT = "re-download the model files; the checkpoint does not match its config"


def layer_tensor_names(config: ModelConfig, layer: int) -> list[str]:
    """Every tensor name of decoder layer ``layer``, in checkpoint order."""
    if not 0 <= layer < config.num_layers:
        raise ValueError(f"layer {layer} out of range for a {config.num_layers}-layer model")
    p = f"model.layers.{layer}."
    names = [p + "input_layernorm.weight"]
    for proj in ("q_proj", "k_proj", "v_proj"):
        names.append(f"{p}self_attn.{proj}.weight")
        if config.attention_bias:
            names.append(f"{p}self_attn.{proj}.bias")
    names.append(p + "self_attn.o_proj.weight")
    if config.o_proj_bias:
        names.append(p + "self_attn.o_proj.bias")
    names.append(p + "post_attention_layernorm.weight")
    names += [f"{p}mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]
    return names


def head_tensor_name(config: ModelConfig) -> str:
    """The tensor the LM head reads: ``lm_head.weight``, or the embedding when tied."""
    return EMBED if config.tie_word_embeddings else LM_HEAD


def shard_tensor_names(config: ModelConfig, layers: LayerRange) -> list[str]:
    """Every tensor a stage serving ``layers`` needs, each name once.

    The first stage adds the embedding; the last adds the final norm and the LM head (the
    embedding when tied, listed once even if the stage is also first).
    """
    _check_range(config, layers)
    names: list[str] = [EMBED] if layers.is_first else []
    for layer in range(layers.start, layers.end):
        names += layer_tensor_names(config, layer)
    if layers.is_last:
        names.append(FINAL_NORM)
        head = head_tensor_name(config)
        if head not in names:
            names.append(head)
    return names


def expected_shape(config: ModelConfig, name: str) -> tuple[int, ...]:
    """The shape tensor ``name`` must have; :class:`ModelFormatError` for a name the model lacks."""
    h = config.hidden_size
    if name in (EMBED, LM_HEAD):
        return (config.vocab_size, h)
    if name == FINAL_NORM:
        return (h,)
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        layer = int(parts[2])
        if layer < config.num_layers and name in layer_tensor_names(config, layer):
            shapes = {
                "input_layernorm.weight": (h,),
                "post_attention_layernorm.weight": (h,),
                "self_attn.q_proj.weight": (config.q_size, h),
                "self_attn.k_proj.weight": (config.kv_size, h),
                "self_attn.v_proj.weight": (config.kv_size, h),
                "self_attn.o_proj.weight": (h, config.q_size),
                "self_attn.q_proj.bias": (config.q_size,),
                "self_attn.k_proj.bias": (config.kv_size,),
                "self_attn.v_proj.bias": (config.kv_size,),
                "self_attn.o_proj.bias": (h,),
                "mlp.gate_proj.weight": (config.intermediate_size, h),
                "mlp.up_proj.weight": (config.intermediate_size, h),
                "mlp.down_proj.weight": (h, config.intermediate_size),
            }
            return shapes[".".join(parts[3:])]
    raise ModelFormatError(
        f"tensor {name!r} is not part of this {config.architecture} model",
        hint="check the checkpoint matches its config.json",
    )


def pick_shard_tensors(
    config: ModelConfig, layers: LayerRange, tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The subset of a larger mapping (e.g. a whole ``state_dict``) that a stage needs.

    Raises :class:`ShardLoadFailed` naming the first missing tensor.
    """
    picked: dict[str, torch.Tensor] = {}
    for name in shard_tensor_names(config, layers):
        if name not in tensors:
            raise ShardLoadFailed(f"tensor {name} is missing for layers {layers}", hint=_RELOAD_HINT)
        picked[name] = tensors[name]
    return picked


def _check_range(config: ModelConfig, layers: LayerRange) -> None:
    if layers.total != config.num_layers:
        raise ValueError(f"layer range {layers} is of a {layers.total}-layer model, config has {config.num_layers}")
