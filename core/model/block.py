"""The Llama decoder block: RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU MLP.

Shapes: ``N`` tokens in a step (one session's chunk or several sessions packed), ``B``
sessions, ``H`` query heads, ``K`` key/value heads, ``D`` head_dim, ``L`` attended cache
positions. Projections are fused (q|k|v and gate|up) so a decode step runs one matmul per
weight matrix, and fp32 weights on CPU are prepacked for oneDNN (see :func:`pack_linear_weight`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from core.model.config import ModelConfig
from core.model.rope import apply_rope


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back before the weight, as transformers does."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)  # the same arithmetic, one kernel
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


@functools.cache
def _onednn_linear_works() -> bool:
    """Whether this torch build packs and runs fp32 linear weights with oneDNN, correctly."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.linspace(-1.0, 1.0, 24 * 40).reshape(24, 40)
        x = torch.linspace(1.0, -2.0, 3 * 40).reshape(3, 40)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.allclose(got, F.linear(x, weight), rtol=1e-4, atol=1e-4))


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [out, in]`` in the layout :func:`linear` reads fastest; the same values either way.

    An fp32 weight on CPU is reordered once into oneDNN's blocked layout (an opaque
    ``torch._mkldnn`` tensor of the same shape, dtype and size). On the x86 CPUs measured,
    oneDNN reads it for a decode step about 1.5x faster than MKL reads the dense weight,
    and for a packed batch of 2..16 steps about 2x faster, and each output row is the same
    whatever the batch size. Any other weight, or a torch build without a working oneDNN,
    is returned as is.
    """
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not _onednn_linear_works():
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [N, in] @ weight.T (+ bias)`` -> ``[N, out]`` for a weight from :func:`pack_linear_weight`."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


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


class DecodeWindows:
    """Which cached positions each of ``B`` single-token steps (one per session) attends to.

    Session ``b``'s token sits at position ``ends[b] - 1`` and attends keys ``lo[b] .. ends[b]-1``
    (all of them, or the last ``window``). The keys are left-aligned in a padded batch of
    ``max(ends - lo)`` positions; ``mask [B, 1, 1, L]`` hides the padding.
    """

    __slots__ = ("starts", "ends", "los", "mask")

    def __init__(self, starts: Sequence[int], window: int | None, device: torch.device) -> None:
        self.starts = list(starts)
        self.ends = [s + 1 for s in self.starts]
        self.los = [0 if window is None else max(0, e - window) for e in self.ends]
        lengths = torch.tensor([e - lo for e, lo in zip(self.ends, self.los, strict=True)], device=device)
        keys = torch.arange(int(lengths.max()), device=device)
        self.mask = (keys[None, :] < lengths[:, None])[:, None, None, :]


def attend_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  caches: Sequence[tuple[torch.Tensor, torch.Tensor]], win: DecodeWindows) -> torch.Tensor:
    """One decode token per session: append ``k``/``v`` ``[B, K, D]`` to each session's layer cache and attend.

    ``q`` is ``[B, H, D]``; ``caches[b]`` is session ``b``'s ``(keys, values)``, each
    ``[K, capacity, D]``. All sessions attend in one masked attention over their padded keys.
    Equals :func:`attend` per session within fp32 rounding. Returns ``[B, H*D]``.
    """
    b, h, d = q.shape
    for (keys, values), pos, new_k, new_v in zip(caches, win.starts, k, v, strict=True):
        keys[:, pos].copy_(new_k)
        values[:, pos].copy_(new_v)
    spans = list(zip(caches, win.los, win.ends, strict=True))
    padded_k = pad_sequence([keys[:, lo:end].transpose(0, 1) for (keys, _), lo, end in spans], batch_first=True)
    padded_v = pad_sequence([values[:, lo:end].transpose(0, 1) for (_, values), lo, end in spans], batch_first=True)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),  # [B, H, 1, D]
        padded_k.transpose(1, 2),  # [B, K, L, D]
        padded_v.transpose(1, 2),
        attn_mask=win.mask,
        enable_gqa=True,
    )  # [B, H, 1, D]
    return out.reshape(b, h * d)


class DecoderLayer(torch.nn.Module):
    """One decoder layer's weights (fused, in the compute dtype) and its two halves of compute."""

    def __init__(self, config: ModelConfig, tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype,
                 device: torch.device | str, pack: bool = True) -> None:
        """``tensors`` maps the layer-relative names (``self_attn.q_proj.weight`` …) to checked tensors.

        With ``pack`` the four projection weights go through :func:`pack_linear_weight`.
        """
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

        def weight(*names: str) -> torch.Tensor:
            joined = cast(*names)
            return pack_linear_weight(joined) if pack else joined

        attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        self.register_buffer("input_norm", cast("input_layernorm.weight"))
        self.register_buffer("wqkv", weight(*(p + ".weight" for p in attn)))  # [(H+2K)*D, hidden]
        self.register_buffer("bqkv", cast(*(p + ".bias" for p in attn)) if config.attention_bias else None)
        self.register_buffer("wo", weight("self_attn.o_proj.weight"))  # [hidden, H*D]
        self.register_buffer("bo", cast("self_attn.o_proj.bias") if config.o_proj_bias else None)
        self.register_buffer("post_norm", cast("post_attention_layernorm.weight"))
        self.register_buffer("w_gate_up", weight("mlp.gate_proj.weight", "mlp.up_proj.weight"))  # [2I, hidden]
        self.register_buffer("w_down", weight("mlp.down_proj.weight"))  # [hidden, I]

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed, projected, rotated ``q [N, H, D]``, ``k [N, K, D]`` and ``v [N, K, D]`` of ``x [N, hidden]``."""
        n = x.shape[0]
        qkv = linear(rms_norm(x, self.input_norm, self.eps), self.wqkv, self.bqkv)  # [N, (H+2K)*D]
        qk = apply_rope(qkv[:, : self.qk_width].view(n, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin)
        v = qkv[:, self.qk_width:].view(n, self.num_kv_heads, self.head_dim)
        return qk[:, : self.num_heads], qk[:, self.num_heads:], v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual output projection ``attn [N, H*D]`` then the residual SwiGLU MLP; returns ``[N, hidden]``."""
        x = x + linear(attn, self.wo, self.bo)
        gate_up = linear(rms_norm(x, self.post_norm, self.eps), self.w_gate_up)  # [N, 2I]
        gate, up = gate_up[:, : self.intermediate], gate_up[:, self.intermediate:]
        return x + linear(F.silu(gate) * up, self.w_down)
