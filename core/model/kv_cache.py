"""One session's key/value cache on one shard: preallocated, grown by amortised doubling."""

from __future__ import annotations

import torch

from core.errors import RequestFailed


class KVCache:
    """Keys and values of every cached token for each of a shard's layers.

    Storage is one tensor ``[num_layers, 2, num_kv_heads, capacity, head_dim]``; when a step
    needs more room the capacity doubles (capped at ``max_tokens``) and the cached prefix is
    copied once, so appending is amortised O(1). ``length`` is the number of cached tokens,
    which is also the position of the next token.
    """

    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", capacity: int = 256, max_tokens: int | None = None) -> None:
        if max_tokens is not None and max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        capacity = max(1, capacity if max_tokens is None else min(capacity, max_tokens))
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.length = 0
        self._storage = torch.empty(0)
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._allocate(capacity)

    @property
    def capacity(self) -> int:
        """Tokens the cache holds before it has to grow."""
        return self._storage.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for this cache (its capacity, not only its length)."""
        return self._storage.numel() * self._storage.element_size()

    def truncate(self, length: int) -> None:
        """Forget every token from position ``length`` on, to replay or recompute from there."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def reserve(self, tokens: int) -> None:
        """Make room for ``tokens`` cached tokens in total; :class:`RequestFailed` past ``max_tokens``."""
        if tokens <= self.capacity:
            return
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise RequestFailed(
                f"the session needs {tokens} cached tokens but its cache is capped at {self.max_tokens}",
                hint="shorten the prompt or lower max_tokens",
            )
        new_capacity = max(tokens, 2 * self.capacity)
        if self.max_tokens is not None:
            new_capacity = min(new_capacity, self.max_tokens)
        old, length = self._storage, self.length
        self._allocate(new_capacity)
        self._storage[:, :, :, :length].copy_(old[:, :, :, :length])

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(keys, values)``, each ``[num_kv_heads, capacity, head_dim]``, of the shard's ``index``-th layer."""
        return self._layers[index]

    def _allocate(self, capacity: int) -> None:
        self._storage = torch.zeros(self.num_layers, 2, self.num_kv_heads, capacity, self.head_dim,
                                    dtype=self.dtype, device=self.device)
        self._layers = [(self._storage[i, 0], self._storage[i, 1]) for i in range(self.num_layers)]

    def __repr__(self) -> str:
        return (f"KVCache(length={self.length}, capacity={self.capacity}, layers={self.num_layers}, "
                f"dtype={self.dtype})")
