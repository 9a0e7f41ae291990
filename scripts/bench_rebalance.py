"""Benchmark: throughput when a volunteer slows down 4x mid-answer, before and after re-planning.

Three volunteer processes serve the default model. One greedy answer streams; after
``--slow-after`` tokens the middle stage's volunteer is slowed 4x (the run-time debug
knob). The pool notices the sustained slowdown and re-plans; we measure decode tokens/s
before the slowdown, while slowed on the old plan, and after the switch. The "re-planned
optimum" is the steady-state rate of a fresh answer on the re-planned pool with the
volunteer still slowed. Writes ``docs/benchmarks/rebalance.json``.

    python scripts/bench_rebalance.py [--tokens 240]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_pipeline import PROMPT, machine  # noqa: E402


def rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0


async def bench(tokens: int, slow_after: int, factor: float) -> dict[str, object]:
    from core.store.default_model import ensure_default_model
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator
    from server.generation import generate
    from server.sampling import SamplingParams

    model = ensure_default_model()
    tmp = Path(tempfile.mkdtemp(prefix="butterfly-rebalance-"))
    coordinator = Coordinator(
        CoordinatorConfig(data_dir=tmp / "coord", port=0, min_volunteers=3, settle_s=0.2, min_gain=0.1), model
    )
    await coordinator.start()
    invite = coordinator.invite(ttl_s=3600)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", f"v{i + 1}",
                          "--data-dir", str(tmp / f"v{i + 1}"), "--threads", "1"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(3)
    ]
    tokenizer = coordinator.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]))

    async def answer(n: int, on_token=None) -> tuple[list[int], list[float]]:  # noqa: ANN001
        ids, stamps = [], []
        async for event in generate(coordinator.pool, tokenizer, prompt, SamplingParams(max_tokens=n, ignore_eos=True)):
            if event.token_id >= 0:
                ids.append(event.token_id)
                stamps.append(time.perf_counter())
                if on_token is not None:
                    await on_token(len(ids))
        return ids, stamps

    try:
        while not coordinator.pool.pipelines:
            await asyncio.sleep(0.1)
        await asyncio.sleep(11)  # past the re-plan cooldown that follows the first plan
        reference, _ = await answer(tokens)
        before_split = [[s.link.name, s.start, s.end] for s in coordinator.pool.pipelines[0].stages]
        victim = coordinator.pool.pipelines[0].stages[1].link
        marks: dict[str, float] = {}
        replans_before = coordinator.pool.replans

        async def on_token(count: int) -> None:
            if count == slow_after:
                marks["slowed"] = time.perf_counter()
                await victim.set_slowdown(factor)
            if "switched" not in marks and coordinator.pool.replans > replans_before:
                marks["switched"] = time.perf_counter()

        ids, stamps = await answer(tokens, on_token)
        after_split = [[s.link.name, s.start, s.end] for s in coordinator.pool.pipelines[0].stages]
        _, optimum_stamps = await answer(96)
        slowed, switched = marks["slowed"], marks.get("switched")
        before = [t for t in stamps if t <= slowed]
        during = [t for t in stamps if slowed < t <= (switched or stamps[-1])]
        after = [t for t in stamps if switched is not None and t > switched + 1.0]
        optimum = rate(optimum_stamps[8:])
        return {
            "victim": victim.name,
            "slowdown_factor": factor,
            "split_before": before_split,
            "split_after": after_split,
            "time_to_switch_s": None if switched is None else switched - slowed,
            "tokens_per_s": {
                "before_slowdown": rate(before),
                "slowed_on_old_plan": rate(during),
                "after_switch": rate(after),
                "replanned_optimum": optimum,
            },
            "after_switch_vs_optimum": rate(after) / optimum if optimum else None,
            "same_answer": ids == reference,
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        await coordinator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=240)
    parser.add_argument("--slow-after", type=int, default=24)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "rebalance.json")
    args = parser.parse_args()
    result = asyncio.run(bench(args.tokens, args.slow_after, args.factor))
    out = {"benchmark": "throughput around a 4x slowdown and the re-plan", "machine": machine(),
           "model": "SmolLM2-135M-Instruct (fp32)", "new_tokens": args.tokens, "target_ratio": 0.8, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
