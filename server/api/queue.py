"""The bounded request queue in front of generation.

Up to ``capacity()`` requests run at once (the pool's session budget); up to
``max_queue`` more wait in arrival order; anything beyond is refused at once with
:class:`~server.api.errors.QueueFull` (HTTP 429). A request that waits longer than
``wait_s`` gives up with :class:`~core.errors.PoolUnavailable` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum

from core.errors import PoolUnavailable
from server.api.errors import QueueFull

POLL_S = 0.25
"""How often a waiting request re-reads the capacity, which changes as pipelines come and go."""


class Admission(Enum):
    RUN = "run"
    QUEUE = "queue"
    REFUSE = "refuse"


def admission(*, running: int, waiting: int, capacity: int, max_queue: int) -> Admission:
    """What to do with a new request: run it now, queue it, or refuse it.

    A request only runs at once when nobody is waiting ahead of it (first come, first served).
    """
    if waiting == 0 and running < capacity:
        return Admission.RUN
    if waiting < max_queue:
        return Admission.QUEUE
    return Admission.REFUSE


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue at one moment, for the map, the CLI and metrics."""

    running: int
    waiting: int
    capacity: int
    max_queue: int


class RequestGate:
    """Admits requests up to a live capacity and queues a bounded number more.

    ``max_queue`` and ``wait_s`` are plain attributes and may be changed while serving.
    """

    def __init__(self, capacity: Callable[[], int], *, max_queue: int, wait_s: float) -> None:
        self._capacity = capacity
        self.max_queue = max_queue
        self.wait_s = wait_s
        self.running = 0
        self._waiters: deque[asyncio.Event] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def stats(self) -> QueueStats:
        """Running and waiting counts with the current bounds."""
        return QueueStats(self.running, self.waiting, max(0, self._capacity()), self.max_queue)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one running slot for the body of the ``async with``; waits or refuses as above."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Take a running slot, waiting in line if needed."""
        decision = admission(
            running=self.running, waiting=self.waiting, capacity=self._capacity(), max_queue=self.max_queue
        )
        if decision is Admission.REFUSE:
            raise QueueFull(
                f"the pool is busy: {self.running} requests running and {self.waiting} waiting "
                f"(the queue holds at most {self.max_queue})",
                hint="retry in a moment, or add volunteers to the pool",
            )
        if decision is Admission.QUEUE:
            await self._wait_turn()
        self.running += 1

    def release(self) -> None:
        """Give a slot back and let the next waiting request check its turn."""
        self.running = max(0, self.running - 1)
        self._nudge()

    async def _wait_turn(self) -> None:
        me = asyncio.Event()
        self._waiters.append(me)
        deadline = time.monotonic() + self.wait_s
        try:
            while not (self._waiters[0] is me and self.running < self._capacity()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolUnavailable(
                        f"no capacity freed up within {self.wait_s:.0f} s",
                        hint="the pool has no ready pipeline or is saturated; add volunteers",
                    )
                me.clear()
                try:
                    await asyncio.wait_for(me.wait(), min(left, POLL_S))
                except TimeoutError:
                    pass
        finally:
            self._waiters.remove(me)
            self._nudge()

    def _nudge(self) -> None:
        for waiter in self._waiters:
            waiter.set()
