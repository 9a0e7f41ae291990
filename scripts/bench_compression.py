"""Benchmark: wire codecs on a 3-stage loopback pool — bytes per token, decode speed, greedy agreement.

The default model is split over three volunteer processes (memory caps force three stages).
Every configuration runs the same prompts one at a time (no batching, so runs are
deterministic), greedy, a fixed number of new tokens each. Configurations: each activation
codec (``model``, ``float16``, ``bfloat16``, ``int8``) with exact fp32 logits, and
``model`` / ``float16`` activations with float16 logits. They are switched on the live links
of one pool, so every configuration sees the same split. Measured per configuration:
wire bytes per generated token (the Forward and Result frames of every link, both
directions, headers included, the prompt's prefill spread over the tokens), decode tokens/s, and agreement of the greedy tokens with the exact
configuration and with transformers ``generate`` (same weights, fp32). Result checking
is off (its tolerance assumes exact activations) and the split is kept fixed. Writes ``docs/benchmarks/compression.json``.

    python scripts/bench_compression.py [--prompts 10] [--tokens 64] [--threads 2]
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

from scripts.bench_batching import FIXED_SPLIT, STAGES, TOPICS, memory_cap_gb, one_session  # noqa: E402
from scripts.bench_pipeline import machine  # noqa: E402

CONFIGS = [  # (activation codec, logits codec)
    ("model", "model"),
    ("float16", "model"),
    ("bfloat16", "model"),
    ("int8", "model"),
    ("model", "float16"),
    ("float16", "float16"),
]
LINK_SPEEDS = {"1 Gbit/s": 125e6, "100 Mbit/s": 12.5e6, "10 Mbit/s": 1.25e6}


def prompt_set(tokenizer: Any, count: int) -> list[list[int]]:
    kinds = ["Write a long, detailed story about {}.", "Explain, step by step, how to write a story about {}.",
             "Write a poem about {}."]
    return [
        tokenizer.encode(tokenizer.apply_chat_template(
            [{"role": "user", "content": kinds[i % len(kinds)].format(TOPICS[i % len(TOPICS)])}]))
        for i in range(count)
    ]


def hf_greedy(model_dir: Path, prompt_ids: list[int], tokens: int, threads: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


class StepBytes:
    """Counts the frame bytes of one link's Forward and Result messages (nothing else: no heartbeats)."""

    def __init__(self, channel: Any) -> None:
        from core.protocol.messages import Forward, Result

        self.sent = self.received = 0
        send, recv = channel.send, channel.recv

        async def counting_send(msg: Any) -> None:
            if isinstance(msg, Forward):
                self.sent += len(msg.to_frame())
            await send(msg)

        async def counting_recv(timeout: float | None = None) -> Any:
            msg = await recv(timeout)
            if isinstance(msg, Result):
                self.received += len(msg.to_frame())  # the same bytes the volunteer framed
            return msg

        channel.send, channel.recv = counting_send, counting_recv


def agreement(got: list[list[int]], want: list[list[int]]) -> dict[str, float]:
    """Share of sessions identical to ``want``, share of tokens before the first divergence, and token match."""
    prefixes, equal_positions, total = [], 0, 0
    for g, w in zip(got, want, strict=True):
        same = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
        prefixes.append(same / max(len(w), 1))
        equal_positions += sum(a == b for a, b in zip(g, w))
        total += len(w)
    return {
        "identical_sessions": sum(g == w for g, w in zip(got, want)) / len(want),
        "mean_prefix_before_divergence": statistics.mean(prefixes),
        "positionwise_token_match": equal_positions / total,
    }


async def measure(model: Any, all_prompts: list[list[int]], tokens: int, threads: int) -> dict[str, Any]:
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator

    tmp = Path(tempfile.mkdtemp(prefix="butterfly-bench-codecs-"))
    config = CoordinatorConfig(data_dir=tmp / "coord", port=0, min_volunteers=STAGES, settle_s=0.3,
                               insecure_loopback=True, context_tokens=512, probation_steps=0, verify_share=0.0,
                               min_gain=FIXED_SPLIT)
    coordinator = Coordinator(config, model)
    await coordinator.start()
    invite = coordinator.invite(ttl_s=3600)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    cap = memory_cap_gb(coordinator.pool.spec)
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", f"v{i + 1}",
                          "--data-dir", str(tmp / f"v{i + 1}"), "--threads", str(threads), "--insecure-loopback",
                          "--memory-gb", f"{cap:.4f}"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(STAGES)
    ]
    try:
        deadline = time.monotonic() + 600
        while not coordinator.pool.pipelines or len(coordinator.pool.pipelines[0].stages) != STAGES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {STAGES}-stage pipeline: {coordinator.pool.last_error}")
            await asyncio.sleep(0.1)
        pipeline = coordinator.pool.pipelines[0]
        links = [s.link for s in pipeline.stages]
        counters = [StepBytes(link.channel) for link in links]
        measured_bandwidth = [link.profile.bandwidth_bytes_per_s for link in links]
        await one_session(coordinator, all_prompts[0], 8)  # warm-up
        runs: dict[str, Any] = {}
        for codec, logits in CONFIGS:
            for link in links:
                link.wire_codec, link.logits_codec = codec, logits
            before = [(c.sent, c.received) for c in counters]
            outputs, rates = [], []
            for prompt_ids in all_prompts:
                out, usage = await one_session(coordinator, prompt_ids, tokens)
                outputs.append(out)
                rates.append(usage.decode_tokens_per_s)
            after = [(c.sent, c.received) for c in counters]
            generated = sum(len(o) for o in outputs)
            hops = [{"stage": i, "to_volunteer": (a[0] - b[0]) / generated, "from_volunteer": (a[1] - b[1]) / generated}
                    for i, (a, b) in enumerate(zip(after, before))]
            per_token = sum(h["to_volunteer"] + h["from_volunteer"] for h in hops)
            name = f"{codec}+{logits}-logits"
            runs[name] = {
                "activations": codec,
                "logits": logits,
                "bytes_per_token": per_token,
                "bytes_per_token_per_hop": hops,
                "decode_tokens_per_s": statistics.median(rates),
                "modeled_transfer_ms_per_token": {k: 1000 * per_token / v for k, v in LINK_SPEEDS.items()},
                "outputs": outputs,
            }
            print(f"{name}: {per_token:.0f} B/token, {runs[name]['decode_tokens_per_s']:.1f} tok/s", flush=True)
        split = [[s.link.name, s.start, s.end] for s in pipeline.stages]
        return {"split": split, "measured_link_bytes_per_s": measured_bandwidth, "runs": runs}
    finally:
        await coordinator.stop()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "compression.json")
    args = parser.parse_args()

    from core.store.default_model import ensure_default_model

    model = ensure_default_model()
    all_prompts = prompt_set(model.tokenizer(), args.prompts)
    measured = asyncio.run(measure(model, all_prompts, args.tokens, args.threads))
    reference = [hf_greedy(model.path, p, args.tokens, args.threads) for p in all_prompts]
    exact = measured["runs"]["model+model-logits"]
    table = []
    for name, run in measured["runs"].items():
        table.append({
            "config": name,
            "bytes_per_token": round(run["bytes_per_token"]),
            "bytes_vs_exact": run["bytes_per_token"] / exact["bytes_per_token"],
            "decode_tokens_per_s": run["decode_tokens_per_s"],
            "agreement_with_exact": agreement(run["outputs"], exact["outputs"]),
            "agreement_with_transformers": agreement(run["outputs"], reference),
        })
    result = {
        "benchmark": "wire codecs: bytes per token, decode speed and greedy agreement",
        "machine": machine(),
        "model": model.manifest.name,
        "dtype": "float32",
        "stages": STAGES,
        "split": measured["split"],
        "measured_link_bytes_per_s": measured["measured_link_bytes_per_s"],
        "prompts": args.prompts,
        "tokens_per_prompt": args.tokens,
        "threads_per_process": args.threads,
        "result_checking": "off",
        "replanning": "off (the first three-stage split is kept)",
        "note": "bytes are the Forward and Result frames of every link in both directions (prefill spread over "
                "the tokens); loopback speed hides transfer time, so the modeled transfer time per token at "
                "common link speeds is given beside the measured decode rate",
        "table": table,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "outputs"} for k, v in measured["runs"].items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
