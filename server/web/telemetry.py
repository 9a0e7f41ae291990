"""Live pool telemetry as a fold: per-volunteer utilisation and step time, tokens/s over time, lost stages.

The coordinator's links only keep running totals (steps served, seconds of compute). A
sampler reads them every half second into an :class:`Observation`; the pure
:func:`advance` folds each observation into a :class:`Telemetry` value:

- utilisation: compute seconds per wall second since the last observation (smoothed);
- step time: compute seconds per step over the same interval;
- tokens: every step served by a pipeline's last stage samples exactly one token, so the
  growth of those counters is the pool's token count, whichever client asked;
- stage failures: a volunteer that was in a pipeline and is now gone without draining.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.links import VolunteerLink
    from server.pool import Pool

SAMPLE_INTERVAL_S = 0.5
HISTORY_POINTS = 240
"""Two minutes of tokens/s at one point per sample."""
SMOOTHING = 0.5
"""Weight of the newest interval in the smoothed utilisation and step time."""
RATE_WINDOW = 4
"""Intervals each tokens/s point averages over (two seconds), so bursty decoding reads as a steady rate."""


@dataclass(frozen=True, slots=True)
class LinkSample:
    """One volunteer's running totals at one moment, and its place in the pool."""

    node_id: str
    steps: int
    compute_s: float
    in_pipeline: bool
    is_last_stage: bool
    alive: bool = True
    draining: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything read from the pool at one moment: ``now`` is monotonic, ``wall`` epoch seconds."""

    now: float
    wall: float
    links: tuple[LinkSample, ...]


@dataclass(frozen=True, slots=True)
class NodeStats:
    """A volunteer's smoothed utilisation (0–1) and mean step time (``None`` before its first step)."""

    utilisation: float = 0.0
    step_s: float | None = None
    steps: int = 0
    compute_s: float = 0.0
    in_pipeline: bool = False


@dataclass(frozen=True, slots=True)
class Telemetry:
    """The folded state: per-node stats, totals and the tokens/s history ``(wall, tokens_per_s)``.

    ``recent`` holds the last few intervals as ``(seconds, tokens)``; each history point is
    their combined rate.
    """

    now: float | None = None
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    tokens_total: int = 0
    stage_failures: int = 0
    history: tuple[tuple[float, float], ...] = ()
    recent: tuple[tuple[float, int], ...] = ()

    @property
    def tokens_per_s(self) -> float:
        """The pool's current tokens/s (0 before two observations)."""
        return self.history[-1][1] if self.history else 0.0


def advance(state: Telemetry, obs: Observation, *, history_points: int = HISTORY_POINTS) -> Telemetry:
    """Fold one observation into the telemetry; pure (no clock, no I/O)."""
    dt = None if state.now is None else obs.now - state.now
    nodes: dict[str, NodeStats] = {}
    tokens = 0
    failures = 0
    for sample in obs.links:
        before = state.nodes.get(sample.node_id)
        if not sample.alive:
            if before is not None and before.in_pipeline and not sample.draining:
                failures += 1
            continue
        if before is None:
            nodes[sample.node_id] = NodeStats(
                steps=sample.steps, compute_s=sample.compute_s, in_pipeline=sample.in_pipeline
            )
            continue
        d_steps = max(0, sample.steps - before.steps)
        d_compute = max(0.0, sample.compute_s - before.compute_s)
        if sample.is_last_stage:
            tokens += d_steps
        utilisation, step_s = before.utilisation, before.step_s
        if dt is not None and dt > 0:
            utilisation = _smooth(utilisation, min(1.0, d_compute / dt))
        if d_steps:
            step_s = d_compute / d_steps if step_s is None else _smooth(step_s, d_compute / d_steps)
        nodes[sample.node_id] = NodeStats(utilisation, step_s, sample.steps, sample.compute_s, sample.in_pipeline)
    history, recent = state.history, state.recent
    if dt is not None and dt > 0:
        recent = (*recent, (dt, tokens))[-RATE_WINDOW:]
        rate = sum(n for _, n in recent) / sum(d for d, _ in recent)
        history = (*history, (obs.wall, rate))[-history_points:]
    return replace(
        state,
        now=obs.now,
        nodes=nodes,
        tokens_total=state.tokens_total + tokens,
        stage_failures=state.stage_failures + failures,
        history=history,
        recent=recent,
    )


def _smooth(old: float, new: float) -> float:
    return (1 - SMOOTHING) * old + SMOOTHING * new


def observe(pool: Pool, previous: Iterable[VolunteerLink], *, now: float, wall: float) -> Observation:
    """Read the pool's links into an observation.

    ``previous`` are the links that were in a pipeline at the last observation; those
    gone since (closed, so no longer in ``pool.links``) are reported as not alive, which is
    how :func:`advance` sees a stage fail.
    """
    in_pipeline: set[int] = set()
    last: set[int] = set()
    for pipeline in pool.pipelines:
        for stage in pipeline.stages:
            in_pipeline.add(id(stage.link))
        if pipeline.stages:
            last.add(id(pipeline.stages[-1].link))
    samples = [
        LinkSample(
            node_id=link.node_id,
            steps=link.steps_served,
            compute_s=link.compute_s_total,
            in_pipeline=id(link) in in_pipeline,
            is_last_stage=id(link) in last,
            alive=not link.closed.is_set(),
            draining=link.draining,
        )
        for link in pool.links.values()
    ]
    current = {link.node_id for link in pool.links.values()}
    for link in previous:
        if link.closed.is_set() and link.node_id not in current:
            samples.append(LinkSample(link.node_id, link.steps_served, link.compute_s_total, True, False, False, link.draining))
    return Observation(now=now, wall=wall, links=tuple(samples))


class TelemetrySampler:
    """Samples a pool every ``interval_s`` and keeps the folded :class:`Telemetry`."""

    def __init__(self, pool: Pool, *, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.state = Telemetry()
        self._previous: list[VolunteerLink] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> Telemetry:
        """Take one observation now and fold it in."""
        obs = observe(self.pool, self._previous, now=time.monotonic(), wall=time.time())
        self.state = advance(self.state, obs)
        self._previous = [s.link for p in self.pool.pipelines for s in p.stages]
        return self.state

    def start(self) -> None:
        """Start sampling in the background (idempotent)."""
        if self._task is None:
            self.sample()
            self._task = asyncio.create_task(self._loop(), name="pool-telemetry")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()
