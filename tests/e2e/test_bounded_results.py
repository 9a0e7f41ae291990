"""The coordinator checks every result against the stage that sent it, before anyone uses it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.profile import quick_profile
from app.volunteer import Volunteer, VolunteerConfig, _Answer
from core.errors import RequestFailed
from core.protocol.codec import EncodedTensor
from server.generation import generate
from server.sampling import SamplingParams
from tests.conftest import live_pool

pytestmark = [pytest.mark.timeout(120)]


def clipped(answer: _Answer) -> _Answer:
    """The answer with its last column cut off: all logits but one, or one top logit (and its id) fewer than asked."""
    values = answer.out.data[..., :-1]
    ids = None if answer.indices is None else answer.indices[..., :-1].contiguous()
    return _Answer(EncodedTensor(answer.out.codec, values.contiguous(), answer.out.scales), ids)


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=4, temperature=0.8), SamplingParams(max_tokens=4)],
                         ids=["all logits", "top logits"])
async def test_a_result_of_the_wrong_shape_drops_the_volunteer_and_the_request_fails_cleanly(
    tiny_model, tmp_path: Path, params: SamplingParams,  # noqa: ANN001
) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0, request_wait_s=3, recovery_attempts=1) as pool:
        coordinator = pool.coordinator
        liar = Volunteer(VolunteerConfig(
            data_dir=tmp_path / "liar", invite=coordinator.invite(ttl_s=600), insecure_loopback=True, name="liar",  # type: ignore[attr-defined]
            profile=quick_profile(memory_bytes=2**30, name="liar"), benchmark=False,
        ))
        honest = liar._answer
        liar._answer = lambda msg, loaded, cache, y: clipped(honest(msg, loaded, cache, y))  # type: ignore[method-assign]
        task = asyncio.create_task(liar.run())
        try:
            await pool.wait_ready(timeout=60)
            with pytest.raises(RequestFailed):
                async for _ in generate(coordinator.pool, coordinator.tokenizer, [0, 5, 6], params):  # type: ignore[attr-defined]
                    pass
            left = [e["text"] for e in coordinator.pool.events.entries if e["kind"] in ("failure", "leave")]  # type: ignore[attr-defined]
            assert any("protocol violation" in t and "liar" in t for t in left), left
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
