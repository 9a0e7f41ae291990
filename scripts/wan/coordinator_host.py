"""The coordinator's host in the WAN benchmark: serve an open pool on one address and time greedy answers.

Run inside the coordinator's network namespace. Prints one JSON object per line on
stdout: ``listening`` (pool id, address, the memory cap each volunteer must offer so the
pool needs all of them), ``ready`` (the split and each link's measured round trip) and
``result`` (the timed rounds and wire bytes per token); then stops the pool.

    python -m scripts.wan.coordinator_host --address 10.77.1.1 --volunteers 3 [--tokens 32 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cli.bench import even_split, memory_caps  # noqa: E402
from cli.bench_report import Run, bytes_per_token  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
PORT = 8765


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def timed_answer(coordinator, prompt_ids: list[int], tokens: int) -> Run:  # noqa: ANN001
    from server.generation import generate
    from server.sampling import SamplingParams

    start = time.perf_counter()
    usage = None
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    async for event in generate(coordinator.pool, coordinator.tokenizer, prompt_ids, params):
        usage = event.usage or usage
    assert usage is not None
    return Run(usage.time_to_first_token_s, usage.decode_tokens_per_s, time.perf_counter() - start, usage.completion_tokens)


async def serve(args: argparse.Namespace) -> None:
    import torch

    from cli.commands import load_model
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator

    model = load_model(args.model)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="butterfly-wan-"))
    config = CoordinatorConfig(
        data_dir=data_dir, host=args.address, port=PORT, open_pool=True, mdns=True, mdns_interfaces=(args.address,),
        min_volunteers=args.volunteers, settle_s=1.0, dtype=args.dtype,
    )
    spec = model.config.model_spec(name=model.manifest.name, dtype=getattr(torch, args.dtype),
                                   context_tokens=config.context_tokens, concurrency=config.max_sessions)
    caps = memory_caps(spec, even_split(spec.num_layers, args.volunteers))
    coordinator = Coordinator(config, model)
    await coordinator.start()
    try:
        emit("listening", pool_id=coordinator.pool_id, url=coordinator.url, memory_caps=caps)
        pool = coordinator.pool
        deadline = time.monotonic() + args.ready_timeout
        while not (pool.pipelines and len(pool.pipelines[0].stages) == args.volunteers):
            if time.monotonic() > deadline:
                raise SystemExit(f"the pool was not ready after {args.ready_timeout:.0f} s: {pool.last_error}")
            await asyncio.sleep(0.2)
        pipeline = pool.pipelines[0]
        emit("ready", split=[[s.link.name, s.start, s.end] for s in pipeline.stages],
             link_rtt_ms=[None if s.link.rtt_s is None else s.link.rtt_s * 1000 for s in pipeline.stages])
        tokenizer = coordinator.tokenizer
        text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]) if tokenizer.has_chat_template else PROMPT
        prompt = tokenizer.encode(text)
        probation = int(getattr(config, "probation_steps", 0) or 0)
        await timed_answer(coordinator, prompt, max(8, probation + 2))  # warm-up, past result-check probation
        links = [s.link for s in pipeline.stages]

        def wire() -> int:
            return sum(l.channel.bytes_sent + l.channel.bytes_received for l in links)

        before = wire()
        await timed_answer(coordinator, prompt, 1)
        middle = wire()
        await timed_answer(coordinator, prompt, args.tokens)
        per_token = bytes_per_token(wire() - middle, middle - before, args.tokens, 1)
        runs = []
        compute_before = [(l.compute_s_total, l.steps_served) for l in links]
        for _ in range(args.rounds):
            runs.append(await timed_answer(coordinator, prompt, args.tokens))
        compute = [(l.compute_s_total - c, l.steps_served - n) for l, (c, n) in zip(links, compute_before)]
        emit(
            "result",
            model=model.manifest.name,
            prompt_tokens=len(prompt),
            split=[[s.link.name, s.start, s.end] for s in pipeline.stages],
            runs=[{"ttft_s": r.ttft_s, "decode_tokens_per_s": r.decode_tokens_per_s, "total_s": r.total_s,
                   "new_tokens": r.new_tokens} for r in runs],
            wire_bytes_per_token=per_token,
            volunteer_compute_ms_per_step=[c / n * 1000 if n else None for c, n in compute],
            link_rtt_ms=[None if l.rtt_s is None else l.rtt_s * 1000 for l in links],
        )
    finally:
        await coordinator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the IPv4 address to serve and advertise on")
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--volunteers", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--data-dir", default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
