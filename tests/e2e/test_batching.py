"""Continuous batching and wire codecs through a real pool on loopback.

Concurrent greedy sessions are packed into shared forwards by the volunteers and must still
equal transformers token for token; compressed wire codecs must shrink the frames and
finish their sessions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cli.commands import coordinator_config
from cli.main import build_parser
from tests.conftest import live_pool
from tests.e2e.test_pipeline import THREE_TINY_LAYERS, hf_greedy, pipeline_tokens

PROMPTS = [[0, 5, 6, 7], [0, 99, 98], [0, 200, 201, 202, 203, 204], [0, 42], [0, 7, 7, 7, 9], [0, 300, 12, 250]]
NEW_TOKENS = 16
# Steps last long enough that sessions' decode steps meet in the volunteers' queues.
SLOW = ("--slowdown", "3")


def test_wire_codec_flag_reaches_the_coordinator_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["coordinator", "--wire-codec", "int8", "--data-dir", str(tmp_path)])
    assert coordinator_config(args).wire_codec == "int8"
    args = build_parser().parse_args(["coordinator", "--data-dir", str(tmp_path)])
    assert coordinator_config(args).wire_codec == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["coordinator", "--wire-codec", "zip"])


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_batched_sessions_match_transformers_and_codecs_shrink_frames(tiny_model, tmp_path: Path) -> None:
    expected = [hf_greedy(tiny_model.path, p, NEW_TOKENS) for p in PROMPTS]
    # Result checking is off: its tolerance is for exact activations, not for int8 on the wire.
    async with live_pool(tiny_model, tmp_path, volunteers=2, volunteer_args=(*THREE_TINY_LAYERS, *SLOW),
                         wire_codec="model", probation_steps=0, verify_share=0.0) as pool:
        await pool.wait_ready(stages=2)
        links = [s.link for s in pool.coordinator.pool.pipelines[0].stages]
        assert [link.codec for link in links] == ["model", "model"]

        together = await asyncio.gather(*(pipeline_tokens(pool, p, NEW_TOKENS, ignore_eos=True) for p in PROMPTS))
        batched = sum(link.batched_steps for link in links)

        per_step: dict[str, float] = {}
        got: dict[str, list[list[int]]] = {}
        for codec in ("model", "float16", "int8"):
            for link in links:
                link.wire_codec = codec
            before = links[0].channel.bytes_received, links[0].steps_served
            got[codec] = [await pipeline_tokens(pool, p, NEW_TOKENS, ignore_eos=True) for p in PROMPTS[:2]]
            per_step[codec] = (links[0].channel.bytes_received - before[0]) / (links[0].steps_served - before[1])

    assert list(together) == expected
    assert batched > 0, "no decode steps were batched"
    # A decode step's hidden state (96 floats) is 384 bytes in fp32, 192 in fp16, 96 + 4 in int8; the
    # int8 frame's header names its codec and its scales (~50 bytes); heartbeats add a few bytes per step.
    assert per_step["float16"] < per_step["model"] - 150, per_step
    assert per_step["int8"] < per_step["float16"] - 30, per_step
    assert got["model"] == expected[:2]
    assert got["float16"] == expected[:2]  # fp16 rounding does not flip this model's (decisive) choices
    for tokens in got["int8"]:
        assert len(tokens) == NEW_TOKENS
