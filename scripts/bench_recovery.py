"""Benchmark: how fast a request recovers when a volunteer is killed mid-answer.

A coordinator and four volunteer processes on loopback serve the default model. Each
trial streams a greedy answer, SIGKILLs a random volunteer that serves the pipeline once
a few tokens are out, and measures the time from the kill to the next token and the
steps replayed to rebuild the lost caches. The killed volunteer is restarted between
trials. Every answer is checked against the answer of a run without failures.
Writes ``docs/benchmarks/recovery.json``.

    python scripts/bench_recovery.py [--trials 10] [--tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_pipeline import machine  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def bench(trials: int, tokens: int, kill_after: int, volunteers: int, seed: int, verbose: bool = False) -> dict[str, object]:
    from core.store.default_model import ensure_default_model
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator
    from server.generation import generate
    from server.sampling import SamplingParams

    rng = random.Random(seed)
    model = ensure_default_model()
    tmp = Path(tempfile.mkdtemp(prefix="butterfly-recovery-"))
    coordinator = Coordinator(
        CoordinatorConfig(data_dir=tmp / "coord", port=0, min_volunteers=volunteers, settle_s=0.1), model
    )
    await coordinator.start()
    invite = coordinator.invite(ttl_s=3600)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    procs: dict[str, subprocess.Popen] = {}

    def spawn(name: str) -> None:
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", name,
             "--data-dir", str(tmp / name), "--threads", "1"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def spares_loaded() -> bool:
        pool = coordinator.pool
        return all(
            node in pool.links and aid in pool.links[node].loads and pool.links[node].loads[aid].ready.is_set()
            for node, copies in pool.spares.items() for aid, _ in copies
        )

    async def settled() -> None:
        """Steady state: every volunteer connected and measured, a plan serving, hot spares loaded."""
        while not (coordinator.pool.pipelines and len(coordinator.pool.links) == volunteers
                   and all(l.profiled.is_set() for l in coordinator.pool.links.values()) and spares_loaded()):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)

    async def answer(on_token=None) -> tuple[list[int], object, list[float]]:  # noqa: ANN001
        ids, usage, stamps = [], None, []
        params = SamplingParams(max_tokens=tokens, ignore_eos=True)
        async for event in generate(coordinator.pool, coordinator.tokenizer, prompt, params):
            if event.token_id >= 0:
                ids.append(event.token_id)
                stamps.append(time.perf_counter())
                if on_token is not None:
                    on_token(len(ids))
            usage = event.usage or usage
        return ids, usage, stamps

    for i in range(volunteers):
        spawn(f"v{i + 1}")
    tokenizer = coordinator.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]))
    results = []
    try:
        await settled()
        reference, _, _ = await answer()
        for trial in range(trials):
            await settled()
            in_use = sorted({s.link.name for p in coordinator.pool.pipelines for s in p.stages})
            victim = rng.choice(in_use)
            killed_at: list[float] = []

            def maybe_kill(count: int, victim: str = victim, killed_at: list[float] = killed_at) -> None:
                if count == kill_after and not killed_at:
                    os.kill(procs[victim].pid, signal.SIGKILL)
                    killed_at.append(time.perf_counter())

            ids, usage, stamps = await answer(maybe_kill)
            after = [t for t in stamps if t > killed_at[0]]
            results.append({
                "trial": trial,
                "killed": victim,
                "kill_to_next_token_s": after[0] - killed_at[0],
                "replayed_steps": usage.replayed_steps,
                "recoveries": usage.recoveries,
                "same_answer": ids == reference,
            })
            print(json.dumps(results[-1]), flush=True)
            if verbose:
                for e in coordinator.pool.events.entries[-6:]:
                    print(f"  {e['time'] - (time.time() - time.perf_counter() + killed_at[0]):+.3f} s {e['kind']}: {e['text'][:100]}")
            procs[victim].wait()
            spawn(victim)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        await coordinator.stop()
    times = [r["kill_to_next_token_s"] for r in results]
    return {
        "trials": results,
        "kill_to_next_token_s": {
            "p50": statistics.median(times),
            "p95": percentile(times, 0.95),
            "max": max(times),
            "mean": statistics.mean(times),
        },
        "replayed_steps_mean": statistics.mean(r["replayed_steps"] for r in results),
        "all_answers_equal_reference": all(r["same_answer"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--kill-after", type=int, default=16, help="kill once this many tokens are out")
    parser.add_argument("--volunteers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "recovery.json")
    parser.add_argument("--verbose", action="store_true", help="print the pool's events around each kill")
    args = parser.parse_args()
    result = asyncio.run(bench(args.trials, args.tokens, args.kill_after, args.volunteers, args.seed, args.verbose))
    out = {
        "benchmark": "time from a volunteer's SIGKILL to the next token",
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (fp32)",
        "volunteers": args.volunteers,
        "new_tokens": args.tokens,
        "kill_after_tokens": args.kill_after,
        "target_p95_s": 2.0,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "trials"}, indent=2))


if __name__ == "__main__":
    main()
