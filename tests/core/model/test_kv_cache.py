"""KV cache bookkeeping: doubling growth that keeps the prefix, truncation, the token cap."""

from __future__ import annotations

import pytest
import torch

from core.errors import RequestFailed
from core.model.kv_cache import KVCache


def _cache(**kw: object) -> KVCache:
    return KVCache(num_layers=3, num_kv_heads=2, head_dim=4, dtype=torch.float32, **kw)  # type: ignore[arg-type]


def test_growth_doubles_and_keeps_the_cached_prefix() -> None:
    cache = _cache(capacity=4)
    keys, values = cache.layer(2)
    keys[:, :3] = 1.5
    values[:, :3] = -2.0
    cache.length = 3
    cache.reserve(5)
    assert cache.capacity == 8
    keys, values = cache.layer(2)
    assert torch.all(keys[:, :3] == 1.5) and torch.all(values[:, :3] == -2.0)
    cache.reserve(100)
    assert cache.capacity == 100
    cache.reserve(101)
    assert cache.capacity == 200
    assert cache.nbytes == 3 * 2 * 2 * 200 * 4 * 4


def test_truncate_only_rolls_back() -> None:
    cache = _cache()
    cache.length = 10
    cache.truncate(4)
    assert cache.length == 4
    with pytest.raises(ValueError):
        cache.truncate(5)
    with pytest.raises(ValueError):
        cache.truncate(-1)


def test_max_tokens_caps_capacity_and_refuses_beyond() -> None:
    cache = _cache(capacity=256, max_tokens=10)
    assert cache.capacity == 10
    cache.reserve(10)
    with pytest.raises(RequestFailed, match="capped at 10"):
        cache.reserve(11)
    grown = _cache(capacity=4, max_tokens=6)
    grown.reserve(5)
    assert grown.capacity == 6
