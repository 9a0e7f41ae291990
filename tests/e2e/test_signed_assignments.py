"""A volunteer serves only what the pool signed: altered assignments and tampered weights are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from core.protocol.messages import Assign
from tests.conftest import LivePool, live_pool

pytestmark = [pytest.mark.timeout(120)]


async def refusal(pool: LivePool, needle: str, timeout: float = 60.0) -> str:
    """The pool event that reports a volunteer leaving with ``needle`` in its reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in pool.coordinator.pool.events.entries:  # type: ignore[attr-defined]
            if needle in str(entry["text"]):
                return str(entry["text"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no event mentions {needle!r}\n{pool.logs()}")


async def test_an_assignment_altered_after_signing_is_refused(tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    async with live_pool(tiny_model, tmp_path, volunteers=0) as pool:
        coordinator = pool.coordinator
        honest = coordinator.pool._assignment  # type: ignore[attr-defined]

        def altered(layers):  # noqa: ANN001, ANN202 - a relay swapping one tensor's hash
            assign: Assign = honest(layers)
            first = dataclasses.replace(assign.tensors[0], sha256="0" * 64)
            return dataclasses.replace(assign, tensors=(first, *assign.tensors[1:]))

        coordinator.pool._assignment = altered  # type: ignore[attr-defined]
        pool.spawn_volunteer("v1", invite=coordinator.invite(ttl_s=600))  # type: ignore[attr-defined]
        text = await refusal(pool, "is not signed by the pool")
        assert "v1 left" in text
        assert not coordinator.pool.pipelines  # type: ignore[attr-defined]


async def test_weights_tampered_in_transit_are_refused(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    honest = tiny_model.tensor_bytes
    victim = "model.layers.0.self_attn.q_proj.weight"

    def tampered(name: str):  # noqa: ANN202
        data = honest(name)
        if name != victim:
            return data
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        return memoryview(bytes(flipped))

    assert victim in tiny_model.manifest.tensors
    monkeypatch.setattr(tiny_model, "tensor_bytes", tampered)
    async with live_pool(tiny_model, tmp_path, volunteers=1) as pool:
        text = await refusal(pool, "does not match its hash")
        assert victim in text
        assert not pool.coordinator.pool.pipelines  # type: ignore[attr-defined]
