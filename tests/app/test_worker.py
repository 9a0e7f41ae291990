"""The compute process: its line protocol, a real measuring run, and refusing a pool that is not the one pinned."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.worker import EXIT_REFUSED, MAX_LINE_BYTES, WorkerHandle, WorkerRequest, decode_line
from core.identity import Identity
from server.config import CoordinatorConfig
from server.coordinator import Coordinator

pytestmark = pytest.mark.timeout(120)


def test_request_round_trip_and_bad_lines() -> None:
    request = WorkerRequest(data_dir="/d", url="ws://h/ws", invite="bfinv1.a.b", expected_pool_id="bf1x", threads=2, memory_bytes=1 << 30)
    decoded = decode_line(request.to_line())
    assert decoded is not None and WorkerRequest.from_json(decoded) == request
    assert WorkerRequest.from_json({**decoded, "future": 1}) == request
    with pytest.raises(ValueError):
        WorkerRequest.from_json({"data_dir": 5})
    assert decode_line(b"[1, 2]") is None
    assert decode_line(b"{nope") is None
    assert decode_line(b'{"a": "' + b"x" * MAX_LINE_BYTES + b'"}') is None


async def run_worker(request: WorkerRequest) -> tuple[int, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    handle = WorkerHandle(request, on_event=events.append)
    await handle.start()
    code = await asyncio.wait_for(handle.wait(), 90)
    return code, events


async def test_measuring_run_reports_the_machine(tmp_path: Path) -> None:
    code, events = await run_worker(WorkerRequest(data_dir=str(tmp_path), threads=1, probe_only=True))
    assert code == 0, events
    machine = next(e for e in events if e["event"] == "machine")
    assert machine["logical_cores"] >= 1 and machine["total_memory_bytes"] > 0
    assert machine["seconds_per_layer"] > 0 and machine["threads"] == 1
    assert "cpu" in machine["devices"]
    assert events[-1] == {"event": "exit", "reason": "measured"}


async def test_a_pool_proving_another_key_is_refused(tiny_model, tmp_path: Path) -> None:
    coordinator = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", port=0, settle_s=0.1, open_pool=True), tiny_model)
    await coordinator.start()
    try:
        impostor_of = Identity.generate().fingerprint
        code, events = await run_worker(
            WorkerRequest(data_dir=str(tmp_path / "vol"), url=coordinator.ws_url, expected_pool_id=impostor_of, threads=1)
        )
    finally:
        await coordinator.stop()
    assert code == EXIT_REFUSED, events
    error = next(e for e in events if e["event"] == "error")
    assert error["kind"] == "AuthFailed" and impostor_of in error["message"]
    assert not [e for e in events if e["event"] == "joined"]
