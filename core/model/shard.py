"""A pipeline stage: a contiguous range of decoder layers, plus embedding / head at the ends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from core.errors import ShardLoadFailed
from core.model.block import (
    AttentionWindow,
    DecodeWindows,
    DecoderLayer,
    attend,
    attend_decode,
    linear,
    pack_linear_weight,
    rms_norm,
)
from core.model.config import ModelConfig
from core.model.kv_cache import KVCache
from core.model.rope import RopeTable
from core.model.weights import EMBED, FINAL_NORM, expected_shape, head_tensor_name, shard_tensor_names
from core.types import LayerRange

_HINT = "re-download the shard's tensors; they do not match the model's config.json"


class Shard(torch.nn.Module):
    """The layers ``[start, end)`` of one model, run on token ids or hidden states with a KV cache.

    Holds only its own layers' weights (fused, in ``dtype`` on ``device``), the embedding if it
    is the first stage and the final norm + LM head if it is the last. Loading is strict: a
    missing, unexpected, non-float or wrong-shaped tensor raises :class:`ShardLoadFailed`
    naming it. With ``pack_weights`` (the default) the projection weights, and an LM head that
    is not also the embedding, are stored in the layout the fastest linear kernel reads (see
    :func:`core.model.block.pack_linear_weight`); the results are the same within fp32 rounding.
    """

    def __init__(self, config: ModelConfig, layers: LayerRange, tensors: Mapping[str, torch.Tensor], *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 pack_weights: bool = True) -> None:
        super().__init__()
        if layers.total != config.num_layers:
            raise ShardLoadFailed(
                f"layer range {layers} is of a {layers.total}-layer model but the config has {config.num_layers}",
                hint="assign a layer range of this model",
            )
        if not dtype.is_floating_point:
            raise ShardLoadFailed(f"compute dtype {dtype} is not a float type", hint="use float32 or bfloat16")
        _check_tensors(config, layers, tensors)
        self.config = config
        self.layers = layers
        self.dtype = dtype
        self.device = torch.device(device)
        self.blocks = torch.nn.ModuleList(
            DecoderLayer(config, _layer_view(tensors, i), dtype=dtype, device=self.device, pack=pack_weights)
            for i in range(layers.start, layers.end)
        )

        def cast(name: str) -> torch.Tensor:
            return tensors[name].detach().to(device=self.device, dtype=dtype).contiguous()

        self.register_buffer("embed", cast(EMBED) if layers.is_first else None)  # [vocab, hidden]
        self.register_buffer("final_norm", cast(FINAL_NORM) if layers.is_last else None)
        head: torch.Tensor | None = None
        if layers.is_last:
            head_name = head_tensor_name(config)
            if head_name == EMBED and self.embed is not None:
                head = self.embed  # shared with the embedding lookup, which needs it dense
            else:
                head = pack_linear_weight(cast(head_name)) if pack_weights else cast(head_name)
        self.register_buffer("lm_head", head)  # [vocab, hidden]
        self.rope = RopeTable(config, dtype=dtype, device=self.device)

    def new_cache(self, *, max_tokens: int | None = None) -> KVCache:
        """An empty KV cache for one session on this shard (optionally capped at ``max_tokens``)."""
        return KVCache(num_layers=len(self.layers), num_kv_heads=self.config.num_kv_heads,
                       head_dim=self.config.head_dim, dtype=self.dtype, device=self.device, max_tokens=max_tokens)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, cache: KVCache, *, all_logits: bool = False) -> torch.Tensor:
        """Run ``T`` new tokens of one session through this shard and append them to ``cache``.

        ``x`` is int64 token ids ``[T]`` on the first stage, else hidden states ``[T, hidden]``
        of any float dtype. The tokens take positions ``cache.length .. cache.length+T-1`` and
        attend causally to the cache and to each other. Returns hidden states ``[T, hidden]`` in
        the compute dtype, or on the last stage fp32 logits ``[1, vocab]`` of the last token
        (``[T, vocab]`` with ``all_logits``).
        """
        hidden = self._input(x)
        start, tokens = cache.length, hidden.shape[0]
        self._check_cache(cache)
        cache.reserve(start + tokens)
        self.rope.ensure(start + tokens)
        cos, sin = self.rope.cos[start:start + tokens], self.rope.sin[start:start + tokens]
        win = AttentionWindow(start, tokens, self.config.sliding_window, self.device)
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv(hidden, cos, sin)
            keys, values = cache.layer(i)
            hidden = block.finish(hidden, attend(q, k, v, keys, values, win))
        cache.length = start + tokens
        if not self.layers.is_last:
            return hidden
        return self._logits(hidden if all_logits else hidden[-1:])

    @torch.inference_mode()
    def forward_batch(self, items: Sequence[tuple[torch.Tensor, KVCache]], *,
                      all_logits: bool = False) -> list[torch.Tensor]:
        """Run one step of several sessions at once; equals :meth:`forward` per item.

        All items' tokens are packed into one ``[sum(T), hidden]`` matrix so each weight is read
        once per step. When every item is a single-token decode step, attention runs once for
        all of them over their padded, masked caches; otherwise per item against its own
        cache. Returns one output per item, shaped as :meth:`forward` would return it.
        """
        if not items:
            return []
        if len({id(cache) for _, cache in items}) != len(items):
            raise ValueError("forward_batch got the same KV cache twice")
        inputs = [self._input(x) for x, _ in items]
        counts = [h.shape[0] for h in inputs]
        windows: list[AttentionWindow] = []
        for (_, cache), tokens in zip(items, counts, strict=True):
            self._check_cache(cache)
            cache.reserve(cache.length + tokens)
            windows.append(AttentionWindow(cache.length, tokens, self.config.sliding_window, self.device))
        self.rope.ensure(max(w.end for w in windows))
        positions = torch.cat([torch.arange(w.start, w.end) for w in windows]).to(self.device)
        cos, sin = self.rope.cos[positions], self.rope.sin[positions]
        hidden = torch.cat(inputs)  # [N, hidden]
        offsets = [0]
        for tokens in counts:
            offsets.append(offsets[-1] + tokens)
        decode = None
        if max(counts) == 1:  # decode steps only: one attention for all sessions
            decode = DecodeWindows([w.start for w in windows], self.config.sliding_window, self.device)
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv(hidden, cos, sin)
            layer_caches = [cache.layer(i) for _, cache in items]
            if decode is not None:
                hidden = block.finish(hidden, attend_decode(q, k, v, layer_caches, decode))
                continue
            outs = []
            for j, ((keys, values), win) in enumerate(zip(layer_caches, windows, strict=True)):
                a, b = offsets[j], offsets[j + 1]
                outs.append(attend(q[a:b], k[a:b], v[a:b], keys, values, win))
            hidden = block.finish(hidden, torch.cat(outs))
        for (_, cache), win in zip(items, windows, strict=True):
            cache.length = win.end
        if not self.layers.is_last:
            return list(hidden.split(counts))
        if all_logits:
            return list(self._logits(hidden).split(counts))
        last = torch.tensor(offsets[1:], device=self.device) - 1
        return list(self._logits(hidden[last]).split(1))

    # ------------------------------------------------------------------ internals

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids -> embeddings (first stage) or hidden states cast to the compute dtype."""
        if self.embed is not None:
            if x.dtype != torch.int64 or x.dim() != 1 or x.shape[0] == 0:
                raise ValueError(f"the first stage takes int64 token ids [T>0], got {x.dtype} {tuple(x.shape)}")
            lo, hi = torch.aminmax(x)
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
            return F.embedding(x.to(self.device), self.embed)
        if x.dim() != 2 or x.shape[1] != self.config.hidden_size or x.shape[0] == 0 or not x.is_floating_point():
            raise ValueError(
                f"stage {self.layers} takes float hidden states [T>0, {self.config.hidden_size}], "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        return x.to(device=self.device, dtype=self.dtype)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.final_norm is not None and self.lm_head is not None
        return linear(rms_norm(hidden, self.final_norm, self.config.rms_norm_eps), self.lm_head).float()

    def _check_cache(self, cache: KVCache) -> None:
        if (cache.num_layers != len(self.blocks) or cache.num_kv_heads != self.config.num_kv_heads
                or cache.head_dim != self.config.head_dim or cache.dtype != self.dtype):
            raise ValueError(f"{cache!r} was not made by this shard's new_cache()")


def _check_tensors(config: ModelConfig, layers: LayerRange, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`ShardLoadFailed` unless ``tensors`` is exactly the stage's tensors, well shaped."""
    expected = shard_tensor_names(config, layers)
    for name in expected:
        if name not in tensors:
            raise ShardLoadFailed(f"tensor {name} is missing for layers {layers}", hint=_HINT)
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ShardLoadFailed(f"tensor {name} is not a float tensor", hint=_HINT)
        want = expected_shape(config, name)
        if tuple(tensor.shape) != want:
            raise ShardLoadFailed(
                f"tensor {name} has shape {tuple(tensor.shape)}, expected {want}", hint=_HINT
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ShardLoadFailed(
            f"unexpected tensor {unexpected[0]} for layers {layers}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""),
            hint="pass only the stage's tensors (core.model.weights.pick_shard_tensors selects them)",
        )


def _layer_view(tensors: Mapping[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{layer}."
    return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
