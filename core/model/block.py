"""The Llama decoder block: RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU MLP.

Shapes: ``N`` tokens in a step (one session's chunk or several sessions packed), ``H`` query
heads, ``K`` key/value heads, ``D`` head_dim, ``L`` attended cache positions. Projections are
fused (q|k|v and gate|up) so a decode step runs one matmul per weight matrix.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from core.model.config import ModelConfig
from core.model.rope import apply_rope


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back before the weight, as transformers does."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class AttentionWindow:
    """Which cached positions one chunk attends to, and the mask for it.

    A chunk of ``T`` tokens at positions ``start .. start+T-1`` attends keys ``lo .. start+T-1``;
    query ``i`` sees keys ``<= start+i`` (and ``> start+i-window`` with a sliding window).
    """

    __slots__ = ("start", "end", "lo", "mask", "is_causal")

    def __init__(self, start: int, tokens: int, window: int | None, device: torch.device) -> None:
        self.start = start
        self.end = start + tokens
        self.mask: torch.Tensor | None = None
        self.is_causal = False
        if tokens == 1:
            self.lo = 0 if window is None else max(0, self.end - window)
        elif start == 0 and (window is None or tokens <= window):
            self.lo = 0
            self.is_causal = True  # square causal mask: SDPA's own
        else:
            self.lo = 0 if window is None else max(0, start - window + 1)
            q_pos = torch.arange(start, self.end, device=device)[:, None]
            k_pos = torch.arange(self.lo, self.end, device=device)[None, :]
            mask = k_pos <= q_pos  # [T, L]
            if window is not None:
                mask &= k_pos > q_pos - window
            self.mask = mask


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
           win: AttentionWindow) -> torch.Tensor:
    """Append ``k``/``v`` ``[T, K, D]`` to one layer's cache ``[K, capacity, D]`` and attend.

    Returns ``[T, H*D]``.
    """
    t, h, d = q.shape
    keys[:, win.start:win.end].copy_(k.transpose(0, 1))
    values[:, win.start:win.end].copy_(v.transpose(0, 1))
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # [1, H, T, D]
        keys[:, win.lo:win.end].unsqueeze(0),  # [1, K, L, D]
        values[:, win.lo:win.end].unsqueeze(0),
        attn_mask=win.mask,
        is_causal=win.is_causal,
        enable_gqa=True,
    )  # [1, H, T, D]
    return out[0].transpose(0, 1).reshape(t, h * d)


class DecoderLayer(torch.nn.Module):
    """One decoder layer's weights (fused, in the compute dtype) and its two halves of compute."""

    def __init__(self, config: ModelConfig, tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        """``tensors`` maps the layer-relative names (``self_attn.q_proj.weight`` …) to checked tensors."""
        super().__init__()
        self.eps = config.rms_norm_eps
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.qk_width = config.q_size + config.kv_size
        self.intermediate = config.intermediate_size

        def cast(*names: str) -> torch.Tensor:
            parts = [tensors[n].detach() for n in names]
            joined = parts[0] if len(parts) == 1 else torch.cat(parts)
            return joined.to(device=device, dtype=dtype).contiguous()

        attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        self.register_buffer("input_norm", cast("input_layernorm.weight"))
        self.register_buffer("wqkv", cast(*(p + ".weight" for p in attn)))  # [(H+2K)*D, hidden]
        self.register_buffer("bqkv", cast(*(p + ".bias" for p in attn)) if config.attention_bias else None)
        self.register_buffer("wo", cast("self_attn.o_proj.weight"))  # [hidden, H*D]
        self.register_buffer("bo", cast("self_attn.o_proj.bias") if config.o_proj_bias else None)
        self.register_buffer("post_norm", cast("post_attention_layernorm.weight"))
        self.register_buffer("w_gate_up", cast("mlp.gate_proj.weight", "mlp.up_proj.weight"))  # [2I, hidden]
        self.register_buffer("w_down", cast("mlp.down_proj.weight"))  # [hidden, I]

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed, projected, rotated ``q [N, H, D]``, ``k [N, K, D]`` and ``v [N, K, D]`` of ``x [N, hidden]``."""
        n = x.shape[0]
        qkv = F.linear(rms_norm(x, self.input_norm, self.eps), self.wqkv, self.bqkv)  # [N, (H+2K)*D]
        qk = apply_rope(qkv[:, : self.qk_width].view(n, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin)
        v = qkv[:, self.qk_width:].view(n, self.num_kv_heads, self.head_dim)
        return qk[:, : self.num_heads], qk[:, self.num_heads:], v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual output projection ``attn [N, H*D]`` then the residual SwiGLU MLP; returns ``[N, hidden]``."""
        x = x + F.linear(attn, self.wo, self.bo)
        gate_up = F.linear(rms_norm(x, self.post_norm, self.eps), self.w_gate_up)  # [N, 2I]
        gate, up = gate_up[:, : self.intermediate], gate_up[:, self.intermediate:]
        return x + F.linear(F.silu(gate) * up, self.w_down)
