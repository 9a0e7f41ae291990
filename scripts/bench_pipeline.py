"""Benchmark: the 3-volunteer loopback pipeline vs single-process Hugging Face ``generate``.

Same weights (the stored default model), same dtype, same prompt, greedy, same number of
new tokens, measured in one run. Each volunteer process gets the reference's thread count;
with one session only one stage computes at a time, so at any instant the pipeline uses
no more threads than the reference. Writes ``docs/benchmarks/pipeline.json``.

    python scripts/bench_pipeline.py [--tokens 64] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def machine() -> dict[str, object]:
    import psutil
    import torch

    from app.hardware.probe import cpu_model

    cpu = cpu_model(platform.system())
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def hf_reference(model_dir: Path, prompt_ids: list[int], tokens: int, rounds: int, threads: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, StoppingCriteria

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])

    class Stamps(StoppingCriteria):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001, ANN003, ANN204
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ttfts, rates = [], []
    for r in range(rounds + 1):
        stamps = Stamps()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                           do_sample=False, pad_token_id=0, stopping_criteria=[stamps])
        if r == 0:
            continue  # warm-up
        ttfts.append(stamps.times[0] - start)
        rates.append((len(stamps.times) - 1) / (stamps.times[-1] - stamps.times[0]))
    return {"ttft_s": statistics.median(ttfts), "decode_tokens_per_s": statistics.median(rates)}


async def pipeline(model, prompt_ids: list[int], tokens: int, rounds: int, threads: int, volunteers: int) -> dict[str, object]:  # noqa: ANN001
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator
    from server.generation import generate
    from server.sampling import SamplingParams

    tmp = Path(tempfile.mkdtemp(prefix="butterfly-bench-"))
    coordinator = Coordinator(CoordinatorConfig(data_dir=tmp / "coord", port=0, min_volunteers=volunteers, settle_s=0.3), model)
    await coordinator.start()
    invite = coordinator.invite(ttl_s=3600)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", f"v{i + 1}",
                          "--data-dir", str(tmp / f"v{i + 1}"), "--threads", str(threads)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL)
        for i in range(volunteers)
    ]
    try:
        while not coordinator.pool.pipelines:
            await asyncio.sleep(0.1)
        split = [[s.link.name, s.start, s.end] for s in coordinator.pool.pipelines[0].stages]
        ttfts, rates, bytes_per_token = [], [], []
        for r in range(rounds + 1):
            links = [s.link for s in coordinator.pool.pipelines[0].stages]
            before = [(l.channel.bytes_sent, l.channel.bytes_received) for l in links]
            usage = None
            params = SamplingParams(max_tokens=tokens, ignore_eos=True)
            async for event in generate(coordinator.pool, coordinator.tokenizer, prompt_ids, params):
                usage = event.usage or usage
            after = [(l.channel.bytes_sent, l.channel.bytes_received) for l in links]
            if r == 0:
                continue
            assert usage is not None
            ttfts.append(usage.time_to_first_token_s)
            rates.append(usage.decode_tokens_per_s)
            bytes_per_token.append([
                {"stage": i, "to_volunteer": (a[0] - b[0]) / tokens, "from_volunteer": (a[1] - b[1]) / tokens}
                for i, (a, b) in enumerate(zip(after, before))
            ])
        return {
            "split": split,
            "ttft_s": statistics.median(ttfts),
            "decode_tokens_per_s": statistics.median(rates),
            "bytes_per_token_per_hop": bytes_per_token[-1],
            "note": "bytes include the prompt's prefill frames spread over the tokens, and heartbeats",
        }
    finally:
        await coordinator.stop()
        for p in procs:
            p.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--volunteers", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "pipeline.json")
    args = parser.parse_args()

    from core.store.default_model import ensure_default_model

    model = ensure_default_model()
    tokenizer = model.tokenizer()
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]))
    reference_before = hf_reference(model.path, prompt_ids, args.tokens, args.rounds, args.threads)
    ours = asyncio.run(pipeline(model, prompt_ids, args.tokens, args.rounds, args.threads, args.volunteers))
    reference_after = hf_reference(model.path, prompt_ids, args.tokens, args.rounds, args.threads)
    reference = {
        "ttft_s": statistics.mean([reference_before["ttft_s"], reference_after["ttft_s"]]),
        "decode_tokens_per_s": statistics.mean([reference_before["decode_tokens_per_s"], reference_after["decode_tokens_per_s"]]),
        "runs": [reference_before, reference_after],
    }
    result = {
        "benchmark": "pipeline vs single-process transformers generate",
        "machine": machine(),
        "model": model.manifest.name,
        "dtype": "float32",
        "prompt_tokens": len(prompt_ids),
        "new_tokens": args.tokens,
        "rounds": args.rounds,
        "threads_per_process": args.threads,
        "reference": reference,
        "pipeline": ours,
        "decode_ratio": ours["decode_tokens_per_s"] / reference["decode_tokens_per_s"],
        "ttft_ratio": ours["ttft_s"] / reference["ttft_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
