"""The shape of a Llama-family model, parsed from (and written back to) a Hugging Face ``config.json``.

One frozen :class:`ModelConfig` describes Llama 2/3, Mistral, Qwen2, SmolLM and TinyLlama: they
share the decoder block (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP) and differ only in
sizes, RoPE settings, q/k/v biases (Qwen2), tied embeddings and Mistral's sliding window.
Anything else is refused with :class:`~core.errors.ModelFormatError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ModelFormatError
from core.types import ModelSpec

ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2")
"""The ``model_type`` values this runtime implements."""

_HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ARCH_OF_CLASS = {cls: arch for arch, cls in _HF_CLASS.items()}
# Defaults of the transformers config classes, for fields a config.json may leave out.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}
_DEFAULT_ROPE_THETA = 10_000.0
_DEFAULT_RMS_EPS = 1e-6
_HINT = "use a Llama, Mistral or Qwen2 checkpoint with a standard config.json"


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Llama-3 style RoPE frequency scaling (``rope_type: "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Sizes and settings of one Llama-family model; validated on construction.

    ``attention_bias`` means q/k/v projections carry a bias (always so for Qwen2); a Llama
    config with ``attention_bias`` also has an o_proj bias, as in transformers.
    ``sliding_window`` (Mistral) limits attention to the last that many positions.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ModelFormatError(
                f"unsupported architecture {self.architecture!r} (model_type); supported: {', '.join(ARCHITECTURES)}",
                hint=_HINT,
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelFormatError(f"config field {name} must be a positive integer, got {value!r}", hint=_HINT)
        if self.num_heads % self.num_kv_heads:
            raise ModelFormatError(
                f"num_attention_heads ({self.num_heads}) is not a multiple of num_key_value_heads "
                f"({self.num_kv_heads})",
                hint=_HINT,
            )
        if self.head_dim % 2:
            raise ModelFormatError(f"head_dim must be even for RoPE, got {self.head_dim}", hint=_HINT)
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ModelFormatError("config fields rms_norm_eps and rope_theta must be positive", hint=_HINT)
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelFormatError(f"sliding_window must be positive, got {self.sliding_window}", hint=_HINT)

    # ------------------------------------------------------------------ Hugging Face config.json

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Parse a Hugging Face ``config.json`` dict (transformers 4.x or 5.x spelling).

        Accepts ``rope_scaling`` + ``rope_theta`` (old) and ``rope_parameters`` (new). Raises
        :class:`ModelFormatError` naming the field for an unsupported architecture, activation,
        RoPE type, MLP bias, partial rotary factor, quantized checkpoint or per-layer sliding window.
        """
        arch = _architecture_of(cfg)
        hidden = _required_int(cfg, "hidden_size")
        heads = _required_int(cfg, "num_attention_heads")
        kv_heads = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or (hidden // heads if heads else 0)

        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ModelFormatError(f"config field hidden_act={act!r} is not supported (only 'silu')", hint=_HINT)
        if cfg.get("mlp_bias"):
            raise ModelFormatError("config field mlp_bias=true is not supported", hint=_HINT)
        quant = cfg.get("quantization_config")
        if quant and quant.get("quant_method") != "gguf":
            raise ModelFormatError(
                f"config field quantization_config ({quant.get('quant_method')!r}) is not supported",
                hint="use an unquantized checkpoint or a GGUF file",
            )
        rope_theta, rope_scaling = _parse_rope(cfg)
        sliding_window = _parse_sliding_window(cfg, arch)
        if arch == "qwen2":
            attention_bias = True  # Qwen2 always has q/k/v biases
        elif arch == "mistral":
            attention_bias = False
        else:
            attention_bias = bool(cfg.get("attention_bias", False))

        eos = cfg.get("eos_token_id")
        eos_ids = () if eos is None else (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)
        bos = cfg.get("bos_token_id")
        return cls(
            architecture=arch,
            vocab_size=_required_int(cfg, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_required_int(cfg, "intermediate_size"),
            num_layers=_required_int(cfg, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", _DEFAULT_RMS_EPS)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[arch]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos_ids,
            sliding_window=sliding_window,
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers (4.x and 5.x) loads as the same model."""
        rope_scaling = None
        if self.rope_scaling is not None:
            rope_scaling = {
                "rope_type": "llama3",
                "factor": self.rope_scaling.factor,
                "low_freq_factor": self.rope_scaling.low_freq_factor,
                "high_freq_factor": self.rope_scaling.high_freq_factor,
                "original_max_position_embeddings": self.rope_scaling.original_max_position_embeddings,
            }
        eos: int | list[int] | None = None
        if len(self.eos_token_ids) == 1:
            eos = self.eos_token_ids[0]
        elif self.eos_token_ids:
            eos = list(self.eos_token_ids)
        out: dict[str, Any] = {
            "architectures": [_HF_CLASS[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
        }
        if self.architecture == "llama":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        elif self.architecture == "mistral":
            out["sliding_window"] = self.sliding_window
        else:
            out["use_sliding_window"] = False
        return out

    # ------------------------------------------------------------------ sizes

    @property
    def q_size(self) -> int:
        """Width of the query projection output (heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (and of the value) projection output."""
        return self.num_kv_heads * self.head_dim

    @property
    def o_proj_bias(self) -> bool:
        """Whether o_proj has a bias (Llama with ``attention_bias``; never Qwen2 or Mistral)."""
        return self.attention_bias and self.architecture == "llama"

    @property
    def layer_param_count(self) -> int:
        """Parameters in one decoder layer (projections, biases, both norms)."""
        h = self.hidden_size
        count = h * self.q_size + 2 * h * self.kv_size + self.q_size * h  # q, k, v, o
        count += 3 * h * self.intermediate_size  # gate, up, down
        count += 2 * h  # input and post-attention norms
        if self.attention_bias:
            count += self.q_size + 2 * self.kv_size
        if self.o_proj_bias:
            count += h
        return count

    @property
    def embed_param_count(self) -> int:
        """Parameters of the token embedding (held by the first stage)."""
        return self.vocab_size * self.hidden_size

    @property
    def head_param_count(self) -> int:
        """Parameters of final norm + LM head (held by the last stage, even when tied)."""
        return self.hidden_size + self.vocab_size * self.hidden_size

    def layer_bytes(self, dtype: torch.dtype) -> int:
        """Weight bytes of one decoder layer in ``dtype``."""
        return self.layer_param_count * _itemsize(dtype)

    def kv_bytes_per_token_layer(self, dtype: torch.dtype) -> int:
        """KV cache bytes of one token in one layer (keys and values) in ``dtype``."""
        return 2 * self.kv_size * _itemsize(dtype)

    def model_spec(self, *, name: str, dtype: torch.dtype, context_tokens: int, concurrency: int) -> ModelSpec:
        """The sizes the planner needs, for serving this model in ``dtype``."""
        size = _itemsize(dtype)
        return ModelSpec(
            name=name,
            num_layers=self.num_layers,
            layer_bytes=self.layer_bytes(dtype),
            embed_bytes=self.embed_param_count * size,
            head_bytes=self.head_param_count * size,
            kv_bytes_per_token_layer=self.kv_bytes_per_token_layer(dtype),
            activation_bytes=self.hidden_size * size,
            context_tokens=context_tokens,
            concurrency=concurrency,
        )


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _architecture_of(cfg: Mapping[str, Any]) -> str:
    model_type = cfg.get("model_type")
    if model_type is None:
        classes = cfg.get("architectures") or []
        known = [_ARCH_OF_CLASS[c] for c in classes if c in _ARCH_OF_CLASS]
        if not known:
            raise ModelFormatError(
                f"config has no model_type and no supported entry in architectures ({classes!r})", hint=_HINT
            )
        return known[0]
    if model_type not in ARCHITECTURES:
        raise ModelFormatError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(ARCHITECTURES)}", hint=_HINT
        )
    return str(model_type)


def _required_int(cfg: Mapping[str, Any], name: str) -> int:
    value = cfg.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFormatError(f"config field {name} is missing or not an integer ({value!r})", hint=_HINT)
    return value


def _parse_rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """RoPE base and Llama-3 scaling from either ``rope_parameters`` or ``rope_scaling`` + ``rope_theta``."""
    params = cfg.get("rope_parameters")
    field = "rope_parameters"
    if not params:
        params = cfg.get("rope_scaling")
        field = "rope_scaling"
    params = dict(params or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", _DEFAULT_ROPE_THETA)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if factor is not None and float(factor) != 1.0:
        raise ModelFormatError(f"config field partial_rotary_factor={factor} is not supported", hint=_HINT)
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ModelFormatError(
            f"config field {field}: rope_type {rope_type!r} is not supported (only 'default' and 'llama3')",
            hint=_HINT,
        )
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"config field {field} lacks a valid llama3 parameter: {exc}", hint=_HINT) from exc
    if scaling.high_freq_factor == scaling.low_freq_factor or not math.isfinite(scaling.factor):
        raise ModelFormatError(f"config field {field} has degenerate llama3 factors", hint=_HINT)
    return theta, scaling


def _parse_sliding_window(cfg: Mapping[str, Any], arch: str) -> int | None:
    window = cfg.get("sliding_window")
    if arch == "mistral":
        return None if window is None else int(window)
    if arch == "qwen2" and cfg.get("use_sliding_window") and window is not None:
        # Qwen2 slides only layers >= max_window_layers; refuse the per-layer mix unless none slides.
        num_layers = cfg.get("num_hidden_layers", 0)
        if int(cfg.get("max_window_layers", 28)) < num_layers:
            raise ModelFormatError(
                "config field use_sliding_window=true (per-layer sliding window) is not supported for qwen2",
                hint=_HINT,
            )
    return None
