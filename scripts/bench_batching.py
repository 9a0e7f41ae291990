"""Benchmark: aggregate tokens/s of concurrent sessions on a 3-stage loopback pool, batched vs not.

The default model is split over three volunteer processes (memory caps force three stages).
For each concurrency level N, N greedy sessions with different prompts run at once; the
aggregate rate is all generated tokens over the wall time of the round (prefills
included); the decode-only aggregate is the sum of the sessions' decode rates (each
session's tokens after its first over the time from its first token to its last). The
same rounds run on a pool whose volunteers batch steps (decode steps, and prompts that
arrive together; the default, ``--max-batch 32``) and on one whose volunteers run every
step alone (``--max-batch 1``), and each session's tokens are compared between the two: a
step run alone computes exactly what a solo session computes, so equal tokens mean
batching did not change the answers. Both pools are up at once and their rounds
alternate, so drift in the machine's load hits both alike. Beside the pools, one middle
stage's decode forward is timed in this process at each batch size (``Shard.forward``
for 1, ``Shard.forward_batch`` above), with the weights prepacked for oneDNN (the
runtime's default) and dense: what a packed step costs on this CPU bounds what batching
can gain. Result checking is off in both pools (it recomputes a share of steps on the
coordinator's CPU, which would compete with the volunteers on a small machine) and the
split is kept fixed (no re-plan moves weights mid-measurement). Writes
``docs/benchmarks/batching.json``.

    python scripts/bench_batching.py [--levels 1,2,4,8,16] [--tokens 32] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads: no spinning against the volunteers

from scripts.bench_pipeline import machine  # noqa: E402

TOPICS = [
    "a lighthouse keeper and a storm", "a robot learning to paint", "two rival bakers", "a lost cat in Paris",
    "a village under a volcano", "the last librarian on Mars", "a chess prodigy", "a haunted train station",
    "a beekeeper's secret", "a dragon who hates gold", "an astronaut's first day", "a clockmaker's apprentice",
    "a desert caravan", "a whale that sings opera", "a detective in the rain", "a garden on a rooftop",
]
STAGES = 3
FIXED_SPLIT = 0.99
"""``min_gain`` that keeps the first three-stage split for the whole run: no re-plan moves weights mid-measurement."""


def prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """``count`` different chat prompts of similar length."""
    return [
        tokenizer.encode(tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}]))
        for i in range(count)
    ]


def memory_cap_gb(spec: Any) -> float:
    """Memory each volunteer offers: the largest third of the model plus half a layer, so three stages are needed."""
    from core.types import LayerRange

    n = spec.num_layers
    cuts = [0, n // 3, 2 * n // 3, n]
    need = max(spec.stage_bytes(LayerRange(a, b, n)) for a, b in zip(cuts, cuts[1:]))
    per_layer = spec.layer_bytes + spec.kv_bytes_per_token_layer * spec.context_tokens * spec.concurrency
    return (need + per_layer // 2) / 2**30


async def one_session(coordinator: Any, prompt_ids: list[int], tokens: int) -> tuple[list[int], Any]:
    from server.generation import generate
    from server.sampling import SamplingParams

    out: list[int] = []
    usage = None
    async for event in generate(coordinator.pool, coordinator.tokenizer, prompt_ids,
                                SamplingParams(max_tokens=tokens, ignore_eos=True)):
        if event.token_id >= 0:
            out.append(event.token_id)
        usage = event.usage or usage
    return out, usage


class LoopbackPool:
    """A coordinator in this process and three volunteer processes with ``--max-batch max_batch``."""

    def __init__(self, model: Any, *, max_batch: int, threads: int, max_sessions: int) -> None:
        self.model, self.max_batch, self.threads, self.max_sessions = model, max_batch, threads, max_sessions
        self.coordinator: Any = None
        self.procs: list[subprocess.Popen] = []

    async def start(self) -> None:
        from server.config import CoordinatorConfig
        from server.coordinator import Coordinator

        tmp = Path(tempfile.mkdtemp(prefix="butterfly-bench-batching-"))
        config = CoordinatorConfig(data_dir=tmp / "coord", port=0, min_volunteers=STAGES, settle_s=0.3,
                                   insecure_loopback=True, max_sessions=self.max_sessions, context_tokens=512,
                                   probation_steps=0, verify_share=0.0, min_gain=FIXED_SPLIT)
        self.coordinator = Coordinator(config, self.model)
        await self.coordinator.start()
        invite = self.coordinator.invite(ttl_s=3600)
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
        cap = memory_cap_gb(self.coordinator.pool.spec)
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", f"v{i + 1}",
                              "--data-dir", str(tmp / f"v{i + 1}"), "--threads", str(self.threads),
                              "--insecure-loopback", "--memory-gb", f"{cap:.4f}", "--max-batch", str(self.max_batch)],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(STAGES)
        ]
        deadline = time.monotonic() + 600
        pool = self.coordinator.pool
        while not pool.pipelines or len(pool.pipelines[0].stages) != STAGES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {STAGES}-stage pipeline: {pool.last_error}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    @property
    def split(self) -> list[list[object]]:
        return [[s.link.name, s.start, s.end] for s in self.coordinator.pool.pipelines[0].stages]

    async def round(self, all_prompts: list[list[int]], n: int, tokens: int) -> dict[str, Any]:
        """``n`` sessions at once; their tokens, the aggregate rate and how the volunteers batched them."""
        links = [s.link for s in self.coordinator.pool.pipelines[0].stages]
        before = [(l.steps_served, l.forward_passes, l.batched_steps) for l in links]
        cpu, started = time.process_time(), time.perf_counter()
        done = await asyncio.gather(*(one_session(self.coordinator, all_prompts[i], tokens) for i in range(n)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = [(l.steps_served, l.forward_passes, l.batched_steps) for l in links]
        steps, passes, batched = (sum(a[k] - b[k] for a, b in zip(after, before)) for k in range(3))
        generated = sum(len(t) for t, _ in done)
        return {
            "outputs": [t for t, _ in done],
            "tokens_per_s": generated / wall,
            "sum_of_session_decode_tokens_per_s": sum(u.decode_tokens_per_s for _, u in done),
            "mean_ttft_s": statistics.mean(u.time_to_first_token_s for _, u in done),
            "steps_per_forward": steps / passes if passes else 0.0,
            "batched_step_share": batched / steps if steps else 0.0,
            "coordinator_cpu_ms_per_token": 1000 * cpu / generated,
        }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (and every round's rate)."""
    keys = [k for k in rounds[0] if k != "outputs"]
    out = {k: statistics.median(r[k] for r in rounds) for k in keys}
    out["rounds_tokens_per_s"] = [r["tokens_per_s"] for r in rounds]
    return out


async def measure(model: Any, *, levels: list[int], all_prompts: list[list[int]], tokens: int, rounds: int,
                  threads: int, max_batch: int) -> dict[str, Any]:
    """Both pools up at once; each level's rounds alternate between them, so drift hits both alike."""
    pools = {name: LoopbackPool(model, max_batch=mb, threads=threads, max_sessions=max(16, max(levels)))
             for name, mb in (("batched", max_batch), ("unbatched", 1))}
    try:
        for pool in pools.values():
            await pool.start()
            await one_session(pool.coordinator, all_prompts[0], 8)  # warm-up
        results: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in pools}
        for n in levels:
            for _ in range(rounds):
                for name, pool in pools.items():
                    results[name].setdefault(n, []).append(await pool.round(all_prompts, n, tokens))
            for name in pools:
                print(f"{name} sessions={n}: {summarize(results[name][n])['tokens_per_s']:.1f} tok/s, "
                      f"{summarize(results[name][n])['steps_per_forward']:.2f} steps per forward", flush=True)
        return {"split": pools["batched"].split, "results": results}
    finally:
        for pool in pools.values():
            await pool.stop()


def stage_forward_ms(model: Any, threads: int, sizes: list[int], *, context: int = 64,
                     pack_weights: bool = True) -> dict[str, float]:
    """Best-of-5 milliseconds of one decode step of the middle third's layers, per batch size."""
    import torch

    from core.model.shard import Shard
    from core.model.weights import shard_tensor_names
    from core.types import LayerRange

    torch.set_num_threads(threads)
    config = model.config
    n = config.num_layers
    layers = LayerRange(n // 3, 2 * n // 3, n)
    shard = Shard(config, layers, {name: model.tensor(name).clone() for name in shard_tensor_names(config, layers)},
                  pack_weights=pack_weights)
    out: dict[str, float] = {}
    for size in sizes:
        caches = [shard.new_cache() for _ in range(size)]
        for cache in caches:
            shard(torch.randn(context, config.hidden_size), cache)
        xs = [torch.randn(1, config.hidden_size) for _ in range(size)]
        best = float("inf")
        for _ in range(5):
            for cache in caches:
                cache.truncate(context)
            started = time.perf_counter()
            if size == 1:
                shard(xs[0], caches[0])
            else:
                shard.forward_batch(list(zip(xs, caches, strict=True)))
            best = min(best, time.perf_counter() - started)
        out[str(size)] = round(1000 * best, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,2,4,8,16", help="concurrent sessions to time (comma-separated)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per session")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per volunteer")
    parser.add_argument("--max-batch", type=int, default=32, help="the batched pool's --max-batch")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "batching.json")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",") if v.strip()]

    from core.store.default_model import ensure_default_model

    model = ensure_default_model()
    all_prompts = prompts(model.tokenizer(), max(levels))
    kernel = stage_forward_ms(model, args.threads, sorted({1, *levels}))
    dense_kernel = stage_forward_ms(model, args.threads, sorted({1, *levels}), pack_weights=False)
    print(f"one stage's decode forward, ms by batch size: {kernel} (dense weights: {dense_kernel})", flush=True)
    measured = asyncio.run(measure(model, levels=levels, all_prompts=all_prompts, tokens=args.tokens,
                                   rounds=args.rounds, threads=args.threads, max_batch=args.max_batch))
    runs = measured["results"]
    batched = {n: summarize(r) for n, r in runs["batched"].items()}
    alone = {n: summarize(r) for n, r in runs["unbatched"].items()}
    base_batched, base_alone = batched[levels[0]]["tokens_per_s"], alone[levels[0]]["tokens_per_s"]
    base_decode = batched[levels[0]]["sum_of_session_decode_tokens_per_s"]
    table = []
    for n in levels:
        b, a = batched[n], alone[n]
        table.append({
            "sessions": n,
            "batched_tokens_per_s": round(b["tokens_per_s"], 2),
            "unbatched_tokens_per_s": round(a["tokens_per_s"], 2),
            "batched_vs_one_session": round(b["tokens_per_s"] / base_batched, 2),
            "unbatched_vs_one_session": round(a["tokens_per_s"] / base_alone, 2),
            "batched_vs_unbatched": round(b["tokens_per_s"] / a["tokens_per_s"], 2),
            "batched_decode_tokens_per_s": round(b["sum_of_session_decode_tokens_per_s"], 2),
            "batched_decode_vs_one_session": round(b["sum_of_session_decode_tokens_per_s"] / base_decode, 2),
            "steps_per_forward": round(b["steps_per_forward"], 2),
            "tokens_equal_to_unbatched": all(
                x["outputs"] == y["outputs"] for x, y in zip(runs["batched"][n], runs["unbatched"][n])),
        })
    result = {
        "benchmark": "aggregate tokens/s of concurrent greedy sessions, continuous batching on and off",
        "machine": machine(),
        "model": model.manifest.name,
        "dtype": "float32",
        "stages": STAGES,
        "split": measured["split"],
        "tokens_per_session": args.tokens,
        "rounds": args.rounds,
        "threads_per_volunteer": args.threads,
        "max_batch": args.max_batch,
        "result_checking": "off in both pools",
        "replanning": "off (the first three-stage split is kept)",
        "note": "tokens_per_s = generated tokens / wall time of the round (prefills included), median of rounds; "
                "decode_tokens_per_s = sum over sessions of (tokens - 1) / (last token time - first token time), "
                "prefills excluded; the two pools' rounds alternate; all processes share this machine's cores",
        "table": table,
        "stage_decode_forward_ms_by_batch": kernel,
        "stage_decode_forward_ms_by_batch_dense_weights": dense_kernel,
        "batched": {str(n): v for n, v in batched.items()},
        "unbatched": {str(n): v for n, v in alone.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
