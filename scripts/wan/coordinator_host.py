"""The coordinator's host in the WAN benchmark: serve an open pool on one address and time greedy answers.

Run inside the coordinator's network namespace. Prints one JSON object per line on
stdout: ``listening`` (pool id, address, the memory cap each volunteer must offer so the
pool needs all of them), ``ready`` (the split and each link's measured round trip) and
``result`` (the timed answers, alternating direct links and relay, each with the steps
stages handed off directly; whether all answers' tokens are identical; the coordinator
links' wire bytes per token, per stage and direction, for both ways); then stops the pool.

    python -m scripts.wan.coordinator_host --address 10.77.1.1 --volunteers 3 [--tokens 32 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cli.bench import even_split, memory_caps  # noqa: E402
from cli.bench_report import Run, bytes_per_token  # noqa: E402
from scripts.wan.scenarios import alternating_order  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
PORT = 8765


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


@dataclass(frozen=True, slots=True)
class Answer:
    """One timed answer: its speed, its tokens, and how many of its steps stages handed on directly.

    ``steps`` is the pipeline steps the answer took (one per token: the prompt's, then one per
    token fed back); ``handed_off_steps`` counts, over all stages, the steps a stage handed
    straight to the next one.
    """

    links: str
    run: Run
    tokens: list[int]
    handed_off_steps: int
    steps: int


async def answer(coordinator, prompt_ids: list[int], tokens: int, links: str) -> Answer:  # noqa: ANN001
    """A greedy answer of ``tokens`` tokens over ``links`` ("direct" or "relay"), timed, with the hand-offs it saw."""
    from server.generation import generate
    from server.sampling import SamplingParams

    stages = coordinator.pool.pipelines[0].stages
    handed_before = sum(s.link.handed_off_steps for s in stages)
    start = time.perf_counter()
    usage = None
    ids: list[int] = []
    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    async for event in generate(coordinator.pool, coordinator.tokenizer, prompt_ids, params, direct=links == "direct"):
        if event.token_id >= 0:
            ids.append(event.token_id)
        usage = event.usage or usage
    assert usage is not None
    run = Run(usage.time_to_first_token_s, usage.decode_tokens_per_s, time.perf_counter() - start, usage.completion_tokens)
    return Answer(links, run, ids, sum(s.link.handed_off_steps for s in stages) - handed_before, steps=len(ids))


def fully_handed_off(a: Answer, stages: int) -> bool:
    """Whether every stage but the last handed every step of ``a`` straight to the next one."""
    return a.steps > 0 and a.handed_off_steps == (stages - 1) * a.steps


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
        stages = len(pipeline.stages)
        emit("ready", split=[[s.link.name, s.start, s.end] for s in pipeline.stages],
             link_rtt_ms=[None if s.link.rtt_s is None else s.link.rtt_s * 1000 for s in pipeline.stages])
        tokenizer = coordinator.tokenizer
        text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]) if tokenizer.has_chat_template else PROMPT
        prompt = tokenizer.encode(text)
        probation = int(getattr(config, "probation_steps", 0) or 0)
        warm_tokens = max(8, probation + 2)
        await answer(coordinator, prompt, warm_tokens, "relay")  # warm-up, past result-check probation
        warm_direct = 0
        for warm_direct in range(1, args.direct_warmups + 1):  # volunteers dial each other during the first steps
            if fully_handed_off(await answer(coordinator, prompt, warm_tokens, "direct"), stages):
                break
            await asyncio.sleep(1.0)
        links = [s.link for s in pipeline.stages]

        def counts() -> list[tuple[int, int]]:
            return [(l.channel.bytes_sent, l.channel.bytes_received) for l in links]

        wire: dict[str, dict[str, list[float]]] = {}
        for mode in ("relay", "direct"):
            before = counts()
            await answer(coordinator, prompt, 1, mode)
            middle = counts()
            await answer(coordinator, prompt, args.tokens, mode)
            after = counts()
            wire[mode] = {
                "sent": [bytes_per_token(a[0] - m[0], m[0] - b[0], args.tokens, 1) for b, m, a in zip(before, middle, after)],
                "received": [bytes_per_token(a[1] - m[1], m[1] - b[1], args.tokens, 1) for b, m, a in zip(before, middle, after)],
            }
        answers: list[Answer] = []
        compute_before = [(l.compute_s_total, l.steps_served) for l in links]
        for mode in alternating_order(args.rounds):
            answers.append(await answer(coordinator, prompt, args.tokens, mode))
        compute = [(l.compute_s_total - c, l.steps_served - n) for l, (c, n) in zip(links, compute_before)]
        reference = answers[0].tokens
        emit(
            "result",
            model=model.manifest.name,
            prompt_tokens=len(prompt),
            split=[[s.link.name, s.start, s.end] for s in pipeline.stages],
            direct_warmup_answers=warm_direct,
            runs=[{"links": a.links, "ttft_s": a.run.ttft_s, "decode_tokens_per_s": a.run.decode_tokens_per_s,
                   "total_s": a.run.total_s, "new_tokens": a.run.new_tokens, "handed_off_steps": a.handed_off_steps,
                   "steps": a.steps, "fully_handed_off": fully_handed_off(a, stages)} for a in answers],
            tokens_identical=all(a.tokens == reference for a in answers),
            wire_bytes_per_token=wire,
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
    parser.add_argument("--direct-warmups", type=int, default=6,
                        help="direct answers tried before timing until one is handed off at every stage")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
