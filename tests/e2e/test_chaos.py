"""Chaos: volunteers are killed, frozen and restarted while requests run; no answer changes.

Four volunteer processes serve a random-weight Llama with grouped-query attention. Thirty-
odd greedy requests run, three at a time, while a chaos loop SIGKILLs (or SIGSTOPs) a
random volunteer and starts a fresh process in its place (same key: it rejoins as a
member). Every answer must equal transformers' greedy output for the same prompt.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from server.generation import generate
from server.sampling import SamplingParams
from tests.conftest import live_pool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL/SIGSTOP are POSIX signals"),
]

REQUESTS = 30
NEW_TOKENS = 32
CONCURRENCY = 3
SLOW = ("--slowdown", "4")  # the tiny model computes in microseconds; make steps last long enough to be hit


def references(model_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
            out.append(gen[0, len(prompt):].tolist())
    return out


async def answer(pool, prompt: list[int]) -> tuple[list[int], int]:  # noqa: ANN001
    coordinator = pool.coordinator
    tokens, recoveries = [], 0
    async for event in generate(coordinator.pool, coordinator.tokenizer, prompt, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)):
        if event.token_id >= 0:
            tokens.append(event.token_id)
        if event.usage:
            recoveries = event.usage.recoveries
    return tokens, recoveries


async def chaos(pool, invite: str, *, freeze: bool, rng: random.Random, stop: asyncio.Event, log: list[str]) -> None:  # noqa: ANN001
    while not stop.is_set():
        # Strike again only once the pool has re-formed and served for a while.
        while not pool.coordinator.pool.pipelines and not stop.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(2.0, 4.0))
        in_use = [s.link.name for p in pool.coordinator.pool.pipelines for s in p.stages]
        if not in_use:
            continue
        name = rng.choice(in_use)
        proc = pool.by_name[name]
        if proc.poll() is not None:
            continue
        if freeze:
            # Frozen, it stops answering mid-step: the pool must notice the stall, carry on
            # without it, and take it back when it thaws and reconnects by itself.
            os.kill(proc.pid, signal.SIGSTOP)
            log.append(f"froze {name}")
            await asyncio.sleep(rng.uniform(4.0, 6.0))  # longer than the stall deadline
            os.kill(proc.pid, signal.SIGCONT)
            continue
        os.kill(proc.pid, signal.SIGKILL)
        log.append(f"killed {name}")
        await asyncio.to_thread(proc.wait)
        pool.procs.remove(proc)
        pool.spawn_volunteer(name, invite=invite, extra=SLOW)


@pytest.mark.parametrize("freeze", [False, True], ids=["sigkill", "sigstop"])
async def test_answers_survive_killed_and_frozen_volunteers(tiny_model, tmp_path: Path, freeze: bool) -> None:
    rng = random.Random(20261122 + freeze)
    prompts = [[0] + [rng.randrange(2, 320) for _ in range(rng.randrange(3, 12))] for _ in range(REQUESTS)]
    expected = references(tiny_model.path, prompts)
    async with live_pool(
        tiny_model, tmp_path, volunteers=4, volunteer_args=SLOW, request_wait_s=90, recovery_attempts=20
    ) as pool:
        await pool.wait_ready()
        invite = pool.coordinator.invite(ttl_s=3600)
        stop, log = asyncio.Event(), []
        monkey = asyncio.create_task(chaos(pool, invite, freeze=freeze, rng=rng, stop=stop, log=log))
        results: list[tuple[list[int], int]] = []
        started = time.monotonic()
        started_wall = time.time()
        try:
            for i in range(0, REQUESTS, CONCURRENCY):
                batch = prompts[i : i + CONCURRENCY]
                results += await asyncio.gather(*(answer(pool, p) for p in batch))
        except Exception as exc:
            events = "\n".join(f"{e['time'] - started_wall:7.2f} {e['kind']}: {e['text']}" for e in pool.coordinator.pool.events.entries)
            raise AssertionError(f"{exc}\nchaos: {log}\nevents:\n{events}") from exc
        finally:
            stop.set()
            await monkey
        elapsed = time.monotonic() - started
    got = [tokens for tokens, _ in results]
    recoveries = sum(r for _, r in results)
    mismatched = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not mismatched, f"requests {mismatched} differ; chaos: {log}"
    assert len(log) >= 2, f"the chaos loop only managed {log} in {elapsed:.1f} s"
    assert recoveries >= 1, f"no request needed a recovery; chaos: {log}"
