"""The bounded request queue: run, wait in order, or refuse; give up after the wait limit."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import PoolUnavailable
from server.api.errors import QueueFull
from server.api.queue import Admission, RequestGate, admission


@pytest.mark.parametrize(
    ("running", "waiting", "capacity", "max_queue", "expected"),
    [
        (0, 0, 1, 0, Admission.RUN),
        (1, 0, 2, 0, Admission.RUN),
        (2, 0, 2, 1, Admission.QUEUE),
        (2, 0, 2, 0, Admission.REFUSE),
        (0, 1, 4, 5, Admission.QUEUE),  # someone is already waiting: no overtaking
        (3, 5, 4, 5, Admission.REFUSE),
        (0, 0, 0, 2, Admission.QUEUE),  # no pipeline yet: wait for one
    ],
)
def test_admission_table(running: int, waiting: int, capacity: int, max_queue: int, expected: Admission) -> None:
    assert admission(running=running, waiting=waiting, capacity=capacity, max_queue=max_queue) is expected


async def test_requests_run_in_arrival_order_and_the_overflow_is_refused() -> None:
    gate = RequestGate(lambda: 1, max_queue=2, wait_s=5.0)
    order: list[str] = []
    release = asyncio.Event()

    async def request(name: str) -> None:
        async with gate.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(request("a"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(request(n)) for n in ("b", "c")]
    await asyncio.sleep(0.01)
    assert gate.stats().running == 1 and gate.waiting == 2
    with pytest.raises(QueueFull, match="at most 2"):
        await gate.acquire()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
    assert order == ["a", "b", "c"]
    assert gate.running == 0 and gate.waiting == 0


async def test_a_waiting_request_starts_when_capacity_appears() -> None:
    capacity = 0
    gate = RequestGate(lambda: capacity, max_queue=4, wait_s=5.0)
    task = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.05)
    assert not task.done() and gate.waiting == 1
    capacity = 1
    await asyncio.wait_for(task, 2)
    assert gate.running == 1 and gate.waiting == 0


async def test_waiting_too_long_is_no_capacity() -> None:
    gate = RequestGate(lambda: 0, max_queue=4, wait_s=0.1)
    with pytest.raises(PoolUnavailable, match="no capacity") as info:
        await gate.acquire()
    assert not isinstance(info.value, QueueFull)
    assert gate.waiting == 0 and gate.running == 0


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    gate = RequestGate(lambda: 0, max_queue=4, wait_s=5.0)
    task = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.waiting == 0
