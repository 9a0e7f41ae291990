"""Direct links between volunteers: hidden states skip the coordinator, with relay as the fallback.

Real volunteer processes on loopback find each other over real mDNS and open TLS links; the
pipeline's greedy tokens must equal transformers' either way, and the coordinator's own
links show which way the hidden states went.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import live_pool
from tests.e2e.test_pipeline import TWO_TINY_LAYERS, hf_greedy, pipeline_tokens

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROMPT = [0, 17, 93, 5, 250, 42, 7, 300, 11]
TOKENS = 24
ATTEMPTS = 10


async def run(pool, expected: list[int], *, direct: bool) -> tuple[list[int], list[int]]:  # noqa: ANN001
    """Answers until one ran with the links up (when ``direct``): each stage's handed-off steps
    and the bytes the coordinator sent it per token during that answer.

    The first steps of a new pool relay while the volunteers find and dial each other, and on
    a loaded machine a re-plan may move a stage meanwhile; every answer must equal the reference.
    """
    await pool.wait_ready(stages=3)
    handed: list[int] = []
    per_token: list[int] = []
    for _ in range(ATTEMPTS):
        stages = pool.coordinator.pool.pipelines[0].stages
        sent_before = [s.link.channel.bytes_sent for s in stages]
        handed_before = [s.link.handed_off_steps for s in stages]
        assert await pipeline_tokens(pool, PROMPT, TOKENS, ignore_eos=True) == expected
        handed = [s.link.handed_off_steps - h for s, h in zip(stages, handed_before, strict=True)]
        per_token = [(s.link.channel.bytes_sent - b) // TOKENS for s, b in zip(stages, sent_before, strict=True)]
        same_pipeline = pool.coordinator.pool.pipelines and pool.coordinator.pool.pipelines[0].stages == stages
        if not direct or (same_pipeline and handed[0] == handed[1] == TOKENS):
            break
        await asyncio.sleep(0.5)
    return handed, per_token


async def test_stages_hand_hidden_states_on_directly(tiny_model, tmp_path: Path) -> None:
    expected = hf_greedy(tiny_model.path, PROMPT, TOKENS)
    async with live_pool(tiny_model, tmp_path, volunteers=3, volunteer_args=TWO_TINY_LAYERS) as pool:
        handed, per_token = await run(pool, expected, direct=True)
    hidden_bytes = 96 * 4  # one token's hidden state of the tiny model in fp32
    assert handed[0] == handed[1] == TOKENS and handed[2] == 0, (handed, pool.logs())
    # The coordinator sends the later stages only the step's header, never the hidden state.
    assert per_token[1] < hidden_bytes and per_token[2] < hidden_bytes, per_token


async def test_without_direct_links_the_coordinator_relays(tiny_model, tmp_path: Path) -> None:
    expected = hf_greedy(tiny_model.path, PROMPT, TOKENS)
    async with live_pool(tiny_model, tmp_path, volunteers=3,
                         volunteer_args=(*TWO_TINY_LAYERS, "--no-direct-links")) as pool:
        handed, per_token = await run(pool, expected, direct=False)
    assert handed == [0, 0, 0]
    assert per_token[1] > 96 * 4 and per_token[2] > 96 * 4, per_token


async def test_a_relay_only_coordinator_sends_every_hidden_state_itself(tiny_model, tmp_path: Path) -> None:
    expected = hf_greedy(tiny_model.path, PROMPT, TOKENS)
    async with live_pool(tiny_model, tmp_path, volunteers=3, volunteer_args=TWO_TINY_LAYERS, direct_links=False) as pool:
        handed, per_token = await run(pool, expected, direct=False)
    assert handed == [0, 0, 0]
    assert per_token[1] > 96 * 4 and per_token[2] > 96 * 4, per_token
