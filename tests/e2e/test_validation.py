"""Result validation in a live pool: a volunteer that perturbs its outputs is caught and quarantined.

Three volunteer processes split the model; one runs with the debug flag ``--perturb 0.05``
(noise of 5 % of each output row's size). Greedy requests run, some at once. The pool must
quarantine the perturbing volunteer within 50 of its steps, never strike an honest one,
move its layers to a spare that joined meanwhile, show the quarantine in its status and
map data — and every answer must equal transformers' greedy output on the same weights.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from cli.status import render_status
from server.validation import TrustState
from server.config import CoordinatorConfig
from tests.conftest import LivePool, live_pool
from tests.e2e.test_pipeline import TWELVE_SMOLLM_LAYERS, TWO_TINY_LAYERS, pipeline_tokens

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PERTURB = ("--perturb", "0.05")
WITHIN_STEPS = 50
HALF_SMOLLM = ("--memory-gb", "0.8")  # fifteen layers of the default model and an end, with their KV budget


async def start_pool_with_a_cheater(pool: LivePool, layers_cap: tuple[str, ...], *, stages: int, spare: bool) -> str:
    """Add the perturbing volunteer, wait for a plan that uses it, then (``spare``) add an honest spare."""
    coordinator = pool.coordinator
    pool.spawn_volunteer("cheater", invite=coordinator.invite(ttl_s=600), extra=layers_cap + PERTURB)
    await pool.wait_ready(stages=stages, timeout=180)
    names = [s.link.name for s in coordinator.pool.pipelines[0].stages]
    assert "cheater" in names, f"the plan left the cheater out: {names}"
    if spare:
        pool.spawn_volunteer("spare", invite=coordinator.invite(ttl_s=600), extra=layers_cap)
    return next(s.link.node_id for s in coordinator.pool.pipelines[0].stages if s.link.name == "cheater")


def hf_greedy_many(model_dir: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (the model loaded once), running the full length."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=0, min_new_tokens=new_tokens)
            out.append(gen[0, len(prompt):].tolist())
    return out


async def fetch_json(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.json()


async def check_quarantine(pool: LivePool, cheater: str) -> None:
    """The ledger, the status JSON, the map's data and ``butterfly status`` all show the quarantine."""
    coordinator = pool.coordinator
    auditor = coordinator.pool.auditor
    trust = auditor.trust(cheater)
    assert trust.state is TrustState.QUARANTINED, f"{trust}\n{pool.logs()}"
    quarantined_at = coordinator.pool.quarantined[cheater]["steps"]
    assert quarantined_at <= WITHIN_STEPS and trust.audits <= WITHIN_STEPS, (quarantined_at, trust)
    honest = [n for n, t in auditor.ledger.volunteers.items() if n != cheater]
    assert honest and all(auditor.trust(n).strikes == 0 for n in honest), auditor.ledger
    assert all(s.link.node_id != cheater for p in coordinator.pool.pipelines for s in p.stages)
    status = await fetch_json(coordinator.url + "/api/status")
    cluster = await fetch_json(coordinator.url + "/api/cluster")
    for view in (status, cluster):
        (entry,) = [v for v in view["volunteers"] if v["node_id"] == cheater]
        assert entry["trust"] == "quarantined" and entry["strikes"] >= 3 and entry["layers"] == []
        others = [v for v in view["volunteers"] if v["node_id"] != cheater]
        assert others and all(v["trust"] in ("probation", "trusted") and v["strikes"] == 0 for v in others)
        assert any(e["kind"] == "quarantine" and "cheater" in e["text"] for e in view["events"])
    table = render_status(cluster)
    assert any(line.startswith("cheater") and "quarantined" in line for line in table.splitlines()), table


PRODUCT_CHECKS = {
    "probation_steps": CoordinatorConfig.__dataclass_fields__["probation_steps"].default,
    "verify_share": CoordinatorConfig.__dataclass_fields__["verify_share"].default,
}
"""The checks a pool runs by default (``live_pool`` turns them off for other tests)."""


async def test_a_perturbing_volunteer_is_quarantined_and_answers_stay_exact(tiny_model, tmp_path: Path) -> None:
    prompts = [[0, 17, 93, 5, 250, 42, 7], [0, 99, 98], [0, 200, 201, 202, 203, 204], [0, 5, 6, 7], [0, 300, 11], [0, 42]]
    new_tokens = 24
    expected = hf_greedy_many(tiny_model.path, prompts, new_tokens)
    async with live_pool(
        tiny_model, tmp_path, volunteers=2, volunteer_args=TWO_TINY_LAYERS,
        min_volunteers=3, rebalance_cooldown_s=600, request_wait_s=90, **PRODUCT_CHECKS,
    ) as pool:
        cheater = await start_pool_with_a_cheater(pool, TWO_TINY_LAYERS, stages=3, spare=True)
        started = time.monotonic()
        together = await asyncio.gather(*(pipeline_tokens(pool, p, new_tokens, ignore_eos=True) for p in prompts[:3]))
        alone = [await pipeline_tokens(pool, p, new_tokens, ignore_eos=True) for p in prompts[3:]]
        elapsed = time.monotonic() - started
        got = list(together) + alone
        await check_quarantine(pool, cheater)
        verifier = pool.coordinator.pool.auditor.verifier
        print(f"\n{len(prompts)} requests in {elapsed:.1f} s; {verifier.recomputed_steps} steps recomputed "
              f"in {verifier.compute_s:.2f} s")
    mismatched = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not mismatched, f"answers {mismatched} differ from the honest reference"


async def test_default_model_cheater_is_caught(default_model, tmp_path: Path) -> None:
    tokenizer = default_model.tokenizer()
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
        for text in ("Name three colours.", "What is a lighthouse?")
    ]
    new_tokens = 12
    reference = asyncio.create_task(asyncio.to_thread(hf_greedy_many, default_model.path, prompts, new_tokens))
    # The honest two can hold the model without the cheater; three stages of ten layers still
    # beat two of fifteen, so the first plan uses it.
    async with live_pool(
        default_model, tmp_path, volunteers=2, volunteer_args=HALF_SMOLLM,
        min_volunteers=3, rebalance_cooldown_s=600, request_wait_s=120, **PRODUCT_CHECKS,
    ) as pool:
        cheater = await start_pool_with_a_cheater(pool, TWELVE_SMOLLM_LAYERS, stages=3, spare=False)
        got = await asyncio.gather(*(pipeline_tokens(pool, p, new_tokens) for p in prompts))
        await check_quarantine(pool, cheater)
        verifier = pool.coordinator.pool.auditor.verifier
        print(f"\ndefault model: {verifier.recomputed_steps} steps recomputed, "
              f"{1000 * verifier.compute_s / max(1, verifier.recomputed_steps):.1f} ms each on average")
    expected = await reference  # computed while the pool started
    for g, e in zip(got, expected, strict=True):
        assert g == e[: len(g)] and len(g) >= 4, (g, e)
