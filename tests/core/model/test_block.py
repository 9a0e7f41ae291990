"""The block's kernels: packed linear weights and one attention for a batch of decode steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.model.block import AttentionWindow, DecodeWindows, attend, attend_decode, linear, pack_linear_weight

TOL = {"rtol": 1e-5, "atol": 1e-5}
K, H, D = 2, 4, 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_packed_weight_computes_the_same_linear() -> None:
    weight = torch.randn(48, 40, generator=_gen(0))
    bias = torch.randn(48, generator=_gen(1))
    packed = pack_linear_weight(weight)
    assert packed.shape == weight.shape and packed.dtype == weight.dtype
    for rows in (1, 2, 7, 64):
        x = torch.randn(rows, 40, generator=_gen(rows))
        torch.testing.assert_close(linear(x, packed), F.linear(x, weight), **TOL)
        torch.testing.assert_close(linear(x, packed, bias), F.linear(x, weight, bias), **TOL)
    strided = torch.randn(5, 80, generator=_gen(2))[:, ::2]  # a non-contiguous input
    torch.testing.assert_close(linear(strided, packed), F.linear(strided, weight), **TOL)


def test_packing_is_used_where_oneDNN_runs_and_skipped_for_bf16() -> None:
    weight = torch.randn(16, 8, generator=_gen(3))
    if torch.backends.mkldnn.is_available():
        assert pack_linear_weight(weight).is_mkldnn
    half = weight.to(torch.bfloat16)
    assert pack_linear_weight(half) is half  # left dense: oneDNN's bf16 path needs CPU features many lack
    x = torch.randn(3, 8, generator=_gen(4)).to(torch.bfloat16)
    torch.testing.assert_close(linear(x, half), F.linear(x, half))


def _session_caches(lengths: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = _gen(seed)
    return [(torch.randn(K, n + 8, D, generator=gen), torch.randn(K, n + 8, D, generator=gen)) for n in lengths]


@pytest.mark.parametrize("window", [None, 5])
def test_one_attention_for_decode_steps_equals_attention_per_session(window: int | None) -> None:
    lengths = [0, 3, 11, 4, 1]  # tokens cached before this step, per session
    gen = _gen(5)
    q, k, v = (torch.randn(len(lengths), n, D, generator=gen) for n in (H, K, K))
    solo = _session_caches(lengths, seed=6)
    together = [(keys.clone(), values.clone()) for keys, values in solo]
    want = torch.cat([
        attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], keys, values, AttentionWindow(n, 1, window, torch.device("cpu")))
        for i, ((keys, values), n) in enumerate(zip(solo, lengths, strict=True))
    ])
    got = attend_decode(q, k, v, together, DecodeWindows(lengths, window, torch.device("cpu")))
    assert got.shape == (len(lengths), H * D)
    torch.testing.assert_close(got, want, **TOL)
    for (keys, values), (want_keys, want_values) in zip(together, solo, strict=True):  # the caches took the token
        assert torch.equal(keys, want_keys) and torch.equal(values, want_values)


def test_decode_windows_mask_only_the_padding() -> None:
    win = DecodeWindows([0, 4, 9], window=6, device=torch.device("cpu"))
    assert win.ends == [1, 5, 10] and win.los == [0, 0, 4]
    assert win.mask.shape == (3, 1, 1, 6)
    assert win.mask[:, 0, 0].sum(dim=1).tolist() == [1, 5, 6]
