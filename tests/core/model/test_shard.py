"""A shard's outputs equal transformers' on the same weights, for every stage shape and step pattern."""

from __future__ import annotations

import pytest
import torch

from core.errors import RequestFailed, ShardLoadFailed
from core.model.kv_cache import KVCache
from core.model.reference import load_shard_from_safetensors
from core.model.shard import Shard
from core.model.weights import pick_shard_tensors, shard_tensor_names
from core.types import LayerRange
from tests.core.model.tiny_models import TinyModel, build, reference_states

TOL = {"rtol": 1e-5, "atol": 1e-5}
RANGES = [(0, 4), (0, 1), (1, 3), (3, 4), (0, 2), (2, 4)]


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 256, (n,), generator=torch.Generator().manual_seed(seed))


def _shard(tiny: TinyModel, start: int, end: int, dtype: torch.dtype = torch.float32) -> Shard:
    return load_shard_from_safetensors(tiny.path, tiny.config, LayerRange(start, end, 4), dtype=dtype)


def _stage_io(tiny: TinyModel, start: int, end: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference input and output of stage [start, end): ids/hidden in, hidden/all logits out."""
    hidden, logits = reference_states(tiny.hf, ids)
    x = ids if start == 0 else hidden[start]
    return x, (logits if end == 4 else hidden[end])


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_stage_output_equals_transformers(tiny: TinyModel, start: int, end: int) -> None:
    ids = _ids(13)
    x, expected = _stage_io(tiny, start, end, ids)
    shard = _shard(tiny, start, end)
    out = shard(x, shard.new_cache(), all_logits=True)
    torch.testing.assert_close(out, expected, **TOL)
    last = shard(x, shard.new_cache())
    torch.testing.assert_close(last, expected[-1:] if end == 4 else expected, **TOL)


@pytest.mark.parametrize(("start", "end"), [(0, 4), (1, 3), (2, 4)])
def test_chunked_prefill_then_decode_equals_one_forward(tiny: TinyModel, start: int, end: int) -> None:
    ids = _ids(20, seed=2)
    x, expected = _stage_io(tiny, start, end, ids)
    shard = _shard(tiny, start, end)
    cache = shard.new_cache()
    outs, pos = [], 0
    for size in (5, 1, 3, 1, 1, 7, 1, 1):  # prefill chunks onto a non-empty cache, then decode steps
        outs.append(shard(x[pos:pos + size], cache, all_logits=True))
        pos += size
    assert cache.length == pos == 20
    torch.testing.assert_close(torch.cat(outs), expected, **TOL)


def test_cache_growth_keeps_results(llama: TinyModel) -> None:
    shard = _shard(llama, 0, 4)
    ids = _ids(40, seed=3)
    _, expected = _stage_io(llama, 0, 4, ids)
    small = KVCache(num_layers=4, num_kv_heads=2, head_dim=16, dtype=torch.float32, capacity=2)
    outs = [shard(ids[i:i + 1], small) for i in range(40)]
    assert small.capacity >= 40
    torch.testing.assert_close(torch.cat(outs), expected, **TOL)


def test_truncate_and_replay_reproduce_outputs(tiny: TinyModel) -> None:
    ids = _ids(16, seed=4)
    shard = _shard(tiny, 0, 4)
    cache = shard.new_cache()
    first = shard(ids, cache, all_logits=True)
    cache.truncate(9)
    replay = [shard(ids[9:12], cache, all_logits=True)] + [shard(ids[i:i + 1], cache) for i in range(12, 16)]
    torch.testing.assert_close(torch.cat(replay), first[9:], **TOL)
    # Rolling back and feeding different tokens equals a fresh run on the new sequence.
    cache.truncate(5)
    other = torch.cat([ids[:5], _ids(6, seed=5)])
    out = shard(other[5:], cache, all_logits=True)
    torch.testing.assert_close(out, shard(other, shard.new_cache(), all_logits=True)[5:], **TOL)


@pytest.mark.parametrize(("start", "end"), [(0, 4), (0, 2), (1, 3), (2, 4)])
@pytest.mark.parametrize("all_logits", [False, True])
def test_forward_batch_equals_per_item_forward(tiny: TinyModel, start: int, end: int, all_logits: bool) -> None:
    shard = _shard(tiny, start, end)
    hidden, _ = reference_states(tiny.hf, _ids(30, seed=6))
    sessions = [(0, 1), (0, 4), (3, 1), (9, 5), (12, 1)]  # (cached tokens, new tokens) per session
    base = [_ids(c + n, seed=10 + i) if start == 0 else hidden[start][i:i + c + n]
            for i, (c, n) in enumerate(sessions)]
    singles, batched = [], []
    for seq, (cached, _) in zip(base, sessions, strict=True):
        a, b = shard.new_cache(), shard.new_cache()
        if cached:
            shard(seq[:cached], a)
            shard(seq[:cached], b)
        singles.append(shard(seq[cached:], a, all_logits=all_logits))
        batched.append((seq[cached:], b))
    outs = shard.forward_batch(batched, all_logits=all_logits)
    assert len(outs) == len(sessions)
    for got, want, (_, cache), (cached, new) in zip(outs, singles, batched, sessions, strict=True):
        torch.testing.assert_close(got, want, **TOL)
        assert cache.length == cached + new


@pytest.mark.parametrize(("start", "end"), [(0, 4), (1, 3), (2, 4)])
def test_forward_batch_of_decode_steps_equals_per_item_forward(tiny: TinyModel, start: int, end: int) -> None:
    """Single-token steps take the one-attention path: caches of different lengths, some past the window."""
    shard = _shard(tiny, start, end)
    hidden, _ = reference_states(tiny.hf, _ids(40, seed=8))
    cached = [0, 1, 5, 9, 13, 2]
    base = [_ids(c + 3, seed=20 + i) if start == 0 else hidden[start][i:i + c + 3] for i, c in enumerate(cached)]
    solo = [shard.new_cache() for _ in cached]
    together = [shard.new_cache() for _ in cached]
    for seq, c, a, b in zip(base, cached, solo, together, strict=True):
        if c:
            shard(seq[:c], a)
            shard(seq[:c], b)
    for step in range(3):  # three decode steps, each batched across all sessions
        want = [shard(seq[c + step:c + step + 1], a) for seq, c, a in zip(base, cached, solo, strict=True)]
        got = shard.forward_batch([(seq[c + step:c + step + 1], b) for seq, c, b in zip(base, cached, together, strict=True)])
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, **TOL)
    assert [b.length for b in together] == [c + 3 for c in cached]


def test_packed_weights_change_nothing_but_speed(llama: TinyModel) -> None:
    layers = LayerRange(0, 4, 4)
    tensors = pick_shard_tensors(llama.config, layers, llama.hf.state_dict())
    packed, dense = Shard(llama.config, layers, tensors), Shard(llama.config, layers, tensors, pack_weights=False)
    assert not dense.blocks[0].wqkv.is_mkldnn and not dense.lm_head.is_mkldnn
    if torch.backends.mkldnn.is_available():
        assert packed.blocks[0].wqkv.is_mkldnn and packed.blocks[0].w_down.is_mkldnn and packed.lm_head.is_mkldnn
    assert sum(b.numel() for b in packed.buffers()) == sum(b.numel() for b in dense.buffers())
    ids = _ids(12, seed=9)
    a, b = packed.new_cache(), dense.new_cache()
    torch.testing.assert_close(packed(ids, a, all_logits=True), dense(ids, b, all_logits=True), **TOL)
    torch.testing.assert_close(packed(ids[:1], a), dense(ids[:1], b), **TOL)


def test_bf16_close_to_transformers_bf16(tiny: TinyModel) -> None:
    ids = _ids(12, seed=7)
    ref = build(tiny.name, tiny.path.parent / f"{tiny.name}-bf16").hf.to(torch.bfloat16)
    hidden, logits = reference_states(ref, ids)
    whole = _shard(tiny, 0, 4, torch.bfloat16)
    out = whole(ids, whole.new_cache(), all_logits=True)
    assert out.dtype == torch.float32
    scale = logits.abs().max().item()
    torch.testing.assert_close(out, logits, rtol=0.05, atol=0.05 * scale)
    middle = _shard(tiny, 1, 3, torch.bfloat16)
    h = middle(hidden[1], middle.new_cache())
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), hidden[3].float(), rtol=0.05, atol=0.05 * hidden[3].abs().max().item())


def test_hidden_input_of_another_dtype_is_cast(llama: TinyModel) -> None:
    hidden, _ = reference_states(llama.hf, _ids(6))
    shard = _shard(llama, 1, 3)
    out = shard(hidden[1].to(torch.bfloat16), shard.new_cache())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, hidden[3], rtol=0.05, atol=0.05)


def test_shard_holds_only_its_tensors(llama: TinyModel) -> None:
    middle, first, last = _shard(llama, 1, 3), _shard(llama, 0, 2), _shard(llama, 2, 4)
    assert len(middle.blocks) == 2 and middle.embed is None and middle.lm_head is None
    assert first.embed is not None and first.lm_head is None and first.final_norm is None
    assert last.embed is None and last.lm_head is not None and last.final_norm is not None
    per_layer = llama.config.layer_param_count
    assert sum(b.numel() for b in middle.buffers()) == 2 * per_layer


def test_tied_whole_model_shares_one_embedding(tmp_path) -> None:
    tied = build("tied", tmp_path)
    shard = _shard(tied, 0, 4)
    assert shard.lm_head is shard.embed


def test_strict_loading_names_the_bad_tensor(llama: TinyModel) -> None:
    layers = LayerRange(1, 3, 4)
    state = llama.hf.state_dict()
    good = pick_shard_tensors(llama.config, layers, state)
    missing = dict(good)
    del missing["model.layers.2.mlp.up_proj.weight"]
    with pytest.raises(ShardLoadFailed, match=r"model\.layers\.2\.mlp\.up_proj\.weight is missing"):
        Shard(llama.config, layers, missing)
    extra = "model.layers.3.mlp.up_proj.weight"
    with pytest.raises(ShardLoadFailed, match=r"unexpected tensor model\.layers\.3\."):
        Shard(llama.config, layers, {**good, extra: state[extra]})
    with pytest.raises(ShardLoadFailed, match=r"unexpected tensor model\.embed_tokens\.weight"):
        Shard(llama.config, layers, {**good, "model.embed_tokens.weight": state["model.embed_tokens.weight"]})
    name = "model.layers.1.self_attn.k_proj.weight"
    with pytest.raises(ShardLoadFailed, match=rf"{name} has shape \(64, 64\), expected \(32, 64\)"):
        Shard(llama.config, layers, {**good, name: torch.zeros(64, 64)})
    with pytest.raises(ShardLoadFailed, match=rf"{name} is not a float tensor"):
        Shard(llama.config, layers, {**good, name: torch.zeros(32, 64, dtype=torch.int8)})
    with pytest.raises(ShardLoadFailed, match="layer range"):
        Shard(llama.config, LayerRange(1, 3, 5), good)
    last = LayerRange(3, 4, 4)
    without_head = {n: state[n] for n in shard_tensor_names(llama.config, last) if n != "lm_head.weight"}
    with pytest.raises(ShardLoadFailed, match=r"lm_head\.weight is missing"):
        Shard(llama.config, last, without_head)


def test_bad_inputs_are_refused(llama: TinyModel) -> None:
    first, middle = _shard(llama, 0, 2), _shard(llama, 2, 4)
    with pytest.raises(ValueError, match="token ids"):
        first(torch.tensor([5, 256]), first.new_cache())
    with pytest.raises(ValueError, match="int64"):
        first(torch.tensor([[5]]), first.new_cache())
    with pytest.raises(ValueError, match="hidden states"):
        middle(torch.zeros(3, 32), middle.new_cache())
    with pytest.raises(ValueError, match="new_cache"):
        middle(torch.zeros(3, 64), KVCache(num_layers=3, num_kv_heads=2, head_dim=16, dtype=torch.float32))


def test_cache_cap_refuses_without_side_effects(llama: TinyModel) -> None:
    shard = _shard(llama, 0, 4)
    cache = shard.new_cache(max_tokens=8)
    ids = _ids(10)
    shard(ids[:6], cache)
    with pytest.raises(RequestFailed):
        shard(ids[6:9], cache)
    assert cache.length == 6
    out = shard(ids[6:8], cache, all_logits=True)
    _, logits = reference_states(llama.hf, ids[:8])
    torch.testing.assert_close(out, logits[6:8], **TOL)
