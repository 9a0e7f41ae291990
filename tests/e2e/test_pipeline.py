"""A real pool: coordinator in-process, three volunteer processes, real websockets on loopback.

The oracle is Hugging Face ``transformers`` on the very same stored weights: the
pipeline's greedy tokens must equal ``generate`` token for token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.generation import generate
from server.sampling import SamplingParams
from tests.conftest import live_pool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NEW_TOKENS = 40
# Memory caps that make the planner use every volunteer, whatever the measured speeds:
TWO_TINY_LAYERS = ("--memory-gb", "0.0095")  # ~10 MB: two layers of the tiny model with their KV budget
THREE_TINY_LAYERS = ("--memory-gb", "0.014")
TWELVE_SMOLLM_LAYERS = ("--memory-gb", "0.5")  # 30 layers need three volunteers


def hf_greedy(model_dir: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([prompt_ids])
    # Where the model has an EOS token, mask it so the reference always runs the full length.
    extra = {"min_new_tokens": new_tokens} if model.generation_config.eos_token_id is not None else {}
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **extra,
        )
    return out[0, len(prompt_ids) :].tolist()


async def pipeline_tokens(pool, prompt_ids: list[int], new_tokens: int, **params) -> list[int]:  # noqa: ANN001
    coordinator = pool.coordinator
    tokens = []
    async for event in generate(
        coordinator.pool, coordinator.tokenizer, prompt_ids, SamplingParams(max_tokens=new_tokens, **params)
    ):
        if event.token_id >= 0:
            tokens.append(event.token_id)
    return tokens


async def test_three_volunteers_match_transformers_on_random_gqa_llama(tiny_model, tmp_path: Path) -> None:
    prompt = [0, 17, 93, 5, 250, 42, 7, 300, 11]
    expected = hf_greedy(tiny_model.path, prompt, NEW_TOKENS)
    async with live_pool(tiny_model, tmp_path, volunteers=3, volunteer_args=TWO_TINY_LAYERS) as pool:
        await pool.wait_ready(stages=3)
        stages = pool.coordinator.pool.pipelines[0].stages
        assert [(s.start, s.end) for s in stages][0][0] == 0 and stages[-1].end == 6
        await assert_each_remote_stage_matches(pool, tiny_model.path, prompt)
        got = await pipeline_tokens(pool, prompt, NEW_TOKENS, ignore_eos=True)
    # The tiny model has no EOS in its config, so the reference never stops early either.
    assert len(got) == NEW_TOKENS
    assert got == expected


def hf_hidden_states(model_dir: Path, prompt_ids: list[int]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Every layer boundary's hidden states and the last position's logits, from transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states), out.logits[0, -1:]


async def assert_each_remote_stage_matches(pool, model_dir: Path, prompt: list[int]) -> None:  # noqa: ANN001
    """Feed each volunteer's stage the reference input of its range; compare with the reference output."""
    hidden, logits = hf_hidden_states(model_dir, prompt)
    pipeline = pool.coordinator.pool.pipelines[0]
    for index, stage in enumerate(pipeline.stages):
        x = torch.tensor(prompt) if stage.start == 0 else hidden[stage.start]
        result = await stage.link.forward(session_id=f"check-{index}", assignment_id=stage.assignment_id, start_pos=0, x=x)
        await stage.link.end_session(f"check-{index}")
        expected = logits if index == len(pipeline.stages) - 1 else hidden[stage.end]
        torch.testing.assert_close(result.y, expected, rtol=1e-4, atol=1e-4)


async def test_three_volunteers_match_transformers_on_default_model(default_model, tmp_path: Path) -> None:
    tokenizer = default_model.tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]
    )
    prompt = tokenizer.encode(text)
    expected = hf_greedy(default_model.path, prompt, NEW_TOKENS)
    async with live_pool(default_model, tmp_path, volunteers=3, volunteer_args=TWELVE_SMOLLM_LAYERS) as pool:
        await pool.wait_ready(stages=3)
        await assert_each_remote_stage_matches(pool, default_model.path, prompt)
        got = await pipeline_tokens(pool, prompt, NEW_TOKENS)
        snapshot = pool.coordinator.pool.snapshot()
    assert len(got) >= 32, f"stopped after {len(got)} tokens: {tokenizer.decode(got)!r}"
    assert got == expected[: len(got)]
    spans = sorted(tuple(r) for v in snapshot["volunteers"] for r in v["layers"])
    assert spans[0][0] == 0 and spans[-1][1] == default_model.config.num_layers
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans


async def test_concurrent_sessions_each_match_their_solo_run(tiny_model, tmp_path: Path) -> None:
    import asyncio

    prompts = [[0, 5, 6, 7], [0, 99, 98], [0, 200, 201, 202, 203, 204]]
    async with live_pool(tiny_model, tmp_path, volunteers=2, max_sessions=8, volunteer_args=THREE_TINY_LAYERS) as pool:
        await pool.wait_ready(stages=2)
        solo = [await pipeline_tokens(pool, p, 16, ignore_eos=True) for p in prompts]
        together = await asyncio.gather(*(pipeline_tokens(pool, p, 16, ignore_eos=True) for p in prompts))
        sampled = [
            await pipeline_tokens(pool, prompts[0], 12, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True)
            for _ in range(2)
        ]
    assert list(together) == solo
    assert sampled[0] == sampled[1]
