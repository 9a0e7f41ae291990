"""Rotary position embeddings: inverse frequencies (incl. Llama-3 scaling) and cached cos/sin tables.

The arithmetic mirrors transformers (fp32 inverse frequencies, ``position * inv_freq`` in fp32,
cos/sin cast to the compute dtype) so results match it bit for bit in fp32.
"""

from __future__ import annotations

import math

import torch

from core.model.config import ModelConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """The fp32 inverse frequencies ``[head_dim // 2]``, Llama-3 scaled when ``scaling`` is given."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by factor, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RopeTable:
    """cos and signed-sin tables ``[positions, head_dim]`` in the compute dtype, grown on demand.

    ``sin`` is stored as ``cat(-sin, sin)`` over the two halves so that rotating ``x`` is
    ``x * cos + swap_halves(x) * sin`` (equal to transformers' ``rotate_half`` form).
    """

    def __init__(self, config: ModelConfig, *, dtype: torch.dtype, device: torch.device | str,
                 initial_positions: int = 1024) -> None:
        self._inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(device)
        self._dtype = dtype
        self._device = device
        self.cos = torch.empty(0, config.head_dim, dtype=dtype, device=device)
        self.sin = torch.empty(0, config.head_dim, dtype=dtype, device=device)
        self.ensure(initial_positions)

    def ensure(self, positions: int) -> None:
        """Make the tables cover positions ``[0, positions)`` (doubling, so growth is amortised)."""
        have = self.cos.shape[0]
        if positions <= have:
            return
        n = max(positions, 2 * have)
        pos = torch.arange(n, dtype=torch.int64, device=self._inv_freq.device).float()
        freqs = pos[:, None] * self._inv_freq[None, :]  # [n, head_dim/2]
        half_cos, half_sin = freqs.cos(), freqs.sin()
        self.cos = torch.cat((half_cos, half_cos), dim=-1).to(self._dtype)
        self.sin = torch.cat((-half_sin, half_sin), dim=-1).to(self._dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, heads, head_dim]`` by per-token ``cos``/``sin`` ``[T, head_dim]`` from a :class:`RopeTable`."""
    t, n, d = x.shape
    swapped = x.view(t, n, 2, d // 2).flip(2).view(t, n, d)  # cat(x2, x1)
    return x * cos[:, None, :] + swapped * sin[:, None, :]
