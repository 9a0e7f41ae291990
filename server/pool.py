"""The coordinator's pool: volunteers in, a plan out, pipelines that serve sessions.

The pool reacts to events (a volunteer joined, finished loading, drained, left) by
re-planning with the pure :func:`server.planner.plan`. A new plan is *prepared* while the
old one keeps serving: its volunteers load their layers, and only when every stage
reports ready does the pool switch new sessions to it (make-before-break). Sessions keep
the pipeline they started on until they end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import InsufficientCapacity, PoolUnavailable
from core.protocol.messages import Assign, Drain, TensorSpec
from core.types import NodeId, Plan
from core.model.weights import shard_tensor_names
from server.links import VolunteerLink
from server.planner import plan as make_plan
from server.routing import route

if TYPE_CHECKING:
    from core.store.store import StoredModel
    from server.config import CoordinatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stage:
    """One live stage of a pipeline: the volunteer and the assignment it loaded."""

    link: VolunteerLink
    assignment_id: str
    start: int
    end: int


@dataclass(slots=True, eq=False)
class LivePipeline:
    """A ready pipeline and the sessions currently running on it."""

    stages: tuple[Stage, ...]
    bottleneck_s: float
    sessions: int = 0

    @property
    def alive(self) -> bool:
        return all(not s.link.closed.is_set() for s in self.stages)

    def describe(self) -> list[dict[str, object]]:
        return [
            {"node_id": s.link.node_id, "name": s.link.name, "start": s.start, "end": s.end}
            for s in self.stages
        ]


@dataclass(slots=True)
class PoolEventLog:
    """A bounded log of what happened in the pool, newest last."""

    limit: int = 200
    entries: list[dict[str, object]] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        self.entries.append({"time": time.time(), "kind": kind, "text": text})
        del self.entries[: -self.limit]


class Pool:
    """Volunteers, the current plan, and the live pipelines built from it."""

    def __init__(self, config: CoordinatorConfig, model: StoredModel) -> None:
        self.config = config
        self.model = model
        self.model_config = model.config
        self.spec = self.model_config.model_spec(
            name=model.manifest.name,
            dtype=_torch_dtype(config.dtype),
            context_tokens=config.context_tokens,
            concurrency=config.max_sessions,
        )
        self.links: dict[NodeId, VolunteerLink] = {}
        self.plan: Plan = Plan()
        self.pipelines: list[LivePipeline] = []
        self.events = PoolEventLog()
        self.ready = asyncio.Event()
        self.last_error: str | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._plan_loop(), name="pool-planner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # --- events from links -----------------------------------------------------------

    def add(self, link: VolunteerLink) -> None:
        old = self.links.get(link.node_id)
        if old is not None and not old.closed.is_set():
            log.info("volunteer %s reconnected; dropping its old connection", link.name)
            asyncio.create_task(old.channel.close(4000, "replaced by a new connection"))
        self.links[link.node_id] = link
        self.events.add("join", f"{link.name} joined ({link.profile.device}, {link.profile.memory_bytes / 2**30:.1f} GiB)")
        self._changed.set()

    def on_link_event(self, link: VolunteerLink, event: object) -> None:
        if event == "closed":
            if self.links.get(link.node_id) is link:
                del self.links[link.node_id]
            self.events.add("leave", f"{link.name} left: {link.close_reason}")
            self._drop_dead_pipelines()
            self._changed.set()
        elif isinstance(event, Drain):
            self.events.add("drain", f"{link.name} is draining: {event.reason}")
            self._changed.set()

    def _drop_dead_pipelines(self) -> None:
        self.pipelines = [p for p in self.pipelines if p.alive]
        if not self.pipelines:
            self.ready.clear()

    # --- planning --------------------------------------------------------------------

    async def _plan_loop(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.config.settle_s)
            self._changed.clear()
            try:
                await self._replan_if_needed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad round
                log.exception("planning failed")
                self.last_error = str(exc)
            await self._release_drained()

    def _candidates(self) -> list[VolunteerLink]:
        return [l for l in self.links.values() if not l.draining and not l.closed.is_set()]

    async def _replan_if_needed(self) -> None:
        candidates = self._candidates()
        healthy = bool(self.pipelines) and all(
            not s.link.draining and not s.link.closed.is_set() for p in self.pipelines for s in p.stages
        )
        if healthy:
            return
        if len(candidates) < self.config.min_volunteers:
            self.last_error = (
                f"waiting for volunteers: {len(candidates)} of {self.config.min_volunteers} connected"
            )
            return
        try:
            new_plan = make_plan(self.spec, [l.profile for l in candidates])
        except InsufficientCapacity as exc:
            self.last_error = str(exc)
            self.events.add("capacity", str(exc))
            log.warning("%s", exc)
            return
        live = await self._activate(new_plan)
        if live:
            self.plan = new_plan
            self.pipelines = live
            self.last_error = None
            self.ready.set()
            self.events.add("plan", "plan: " + ", ".join(
                f"{s.link.name} [{s.start}, {s.end})" for p in live for s in p.stages
            ))

    async def _activate(self, new_plan: Plan) -> list[LivePipeline]:
        """Assign every stage of ``new_plan`` and wait until all are loaded."""
        pending: list[tuple[int, Stage, asyncio.Event]] = []
        for index, pipeline in enumerate(new_plan.pipelines):
            for stage in pipeline.stages:
                link = self.links.get(stage.node_id)
                if link is None:
                    return []
                assignment = self._assignment(stage.layers.start, stage.layers.end)
                state = await link.assign(assignment)
                pending.append((index, Stage(link, assignment.assignment_id, stage.layers.start, stage.layers.end), state.ready))
        waits = [asyncio.create_task(ev.wait()) for _, _, ev in pending]
        closed = [asyncio.create_task(s.link.closed.wait()) for _, s, _ in pending]
        try:
            done, _ = await asyncio.wait(
                [asyncio.gather(*waits), *closed], return_when=asyncio.FIRST_COMPLETED, timeout=600
            )
        finally:
            for t in waits + closed:
                t.cancel()
        if any(s.link.closed.is_set() for _, s, _ in pending) or not all(ev.is_set() for _, _, ev in pending):
            self.events.add("plan", "a volunteer left while loading; planning again")
            self._changed.set()
            return []
        live = []
        for index, pipeline in enumerate(new_plan.pipelines):
            stages = tuple(s for i, s, _ in pending if i == index)
            live.append(LivePipeline(stages, pipeline.bottleneck_s))
        return live

    def _assignment(self, start: int, end: int) -> Assign:
        from core.types import LayerRange

        layers = LayerRange(start, end, self.model_config.num_layers)
        names = shard_tensor_names(self.model_config, layers)
        entries = [self.model.manifest.tensors[n] for n in names]
        return Assign(
            assignment_id=uuid.uuid4().hex[:16],
            model_id=self.model.manifest.model_id,
            model_name=self.model.manifest.name,
            hf_config=dict(self.model.hf_config),
            layers=layers,
            dtype=self.config.dtype,
            tensors=tuple(TensorSpec(name=e.name, dtype=e.dtype, shape=tuple(e.shape), nbytes=e.nbytes, sha256=e.sha256) for e in entries),
            max_tokens=self.config.context_tokens,
        )

    async def _release_drained(self) -> None:
        """Let draining volunteers go once no running session needs them.

        By now a replacement plan without them is live if the rest of the pool can hold the
        model; if it cannot, their pipelines are retired anyway (the volunteer asked to
        leave) and new requests wait for capacity.
        """
        for link in [l for l in self.links.values() if l.draining and not l.closed.is_set()]:
            if any(p.sessions for p in self.pipelines for s in p.stages if s.link is link):
                self._changed.set()  # look again when its sessions end
                continue
            self.pipelines = [p for p in self.pipelines if all(s.link is not link for s in p.stages)]
            if not self.pipelines:
                self.ready.clear()
            self.events.add("leave", f"{link.name} drained and was released")
            await link.channel.bye("drained")

    # --- sessions --------------------------------------------------------------------

    async def acquire_pipeline(self) -> LivePipeline:
        """The ready pipeline that will finish a new session soonest; waits (bounded) for one."""
        deadline = time.monotonic() + self.config.request_wait_s
        while True:
            live = [p for p in self.pipelines if p.alive and not any(s.link.draining for s in p.stages)]
            if live:
                index = route([(p.bottleneck_s, p.sessions) for p in live])
                chosen = live[index]
                chosen.sessions += 1
                return chosen
            left = deadline - time.monotonic()
            if left <= 0:
                raise PoolUnavailable(
                    f"no ready pipeline after waiting {self.config.request_wait_s:.0f} s"
                    + (f": {self.last_error}" if self.last_error else ""),
                    hint="start more volunteers or raise their memory caps",
                )
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    def release_pipeline(self, pipeline: LivePipeline) -> None:
        pipeline.sessions = max(0, pipeline.sessions - 1)
        if any(s.link.draining for s in pipeline.stages):
            self._changed.set()

    # --- views -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The pool as plain data (for status pages, the CLI and tests)."""
        return {
            "model": {"id": self.model.manifest.model_id, "name": self.model.manifest.name, "layers": self.model_config.num_layers},
            "ready": bool(self.pipelines),
            "last_error": self.last_error,
            "volunteers": [
                {
                    "node_id": l.node_id,
                    "name": l.name,
                    "os": l.os_name,
                    "device": l.profile.device,
                    "memory_bytes": l.profile.memory_bytes,
                    "seconds_per_layer": l.profile.seconds_per_layer,
                    "rtt_ms": None if l.rtt_s is None else round(l.rtt_s * 1000, 3),
                    "draining": l.draining,
                    "steps": l.steps_served,
                    "layers": [
                        [s.start, s.end] for p in self.pipelines for s in p.stages if s.link is l
                    ],
                }
                for l in self.links.values()
            ],
            "pipelines": [p.describe() for p in self.pipelines],
            "events": self.events.entries[-50:],
        }


def _torch_dtype(name: str):  # noqa: ANN202 - torch is imported lazily for start-up time
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def describe_split(pipelines: Sequence[LivePipeline]) -> str:
    """Human-readable layer split, one line per stage."""
    lines = []
    for i, p in enumerate(pipelines):
        for s in p.stages:
            lines.append(f"  pipeline {i}: layers [{s.start:>2}, {s.end:>2}) on {s.link.name}")
    return "\n".join(lines)
