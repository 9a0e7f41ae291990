"""The coordinator's pool: volunteers in, a plan out, pipelines that serve sessions.

The pool reacts to events — a volunteer joined (and reported its measured profile),
drained, left, or has run persistently slower or faster than planned — by re-planning
with the pure :func:`server.planner.plan`. It switches only for a real gain
(:func:`server.planner.should_replan`, hysteresis), or when the current plan is broken.

Switching is make-before-break: the new plan's volunteers load their layers while the
old pipelines keep serving (a volunteer that already holds the same range keeps its
assignment and its caches); only when every new stage is ready do new sessions go to
the new pipelines. Running sessions move at their next token boundary
(:mod:`server.generation` rebuilds the caches of the stages that changed by replaying
recorded inputs). Pipelines that lose a volunteer are retired at once; pipelines that
hold a *draining* volunteer finish their running sessions first, so a graceful leave
replays nothing. Assignments no pipeline uses any more are dropped (``Unassign``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from core.errors import AuthFailed, ButterflyError, InsufficientCapacity, PoolUnavailable
from core.model.weights import shard_tensor_names
from core.identity import Identity
from core.protocol.messages import Assign, Drain, ProfileUpdate, TensorSpec
from core.protocol.signing import UNSIGNED, sign_assignment
from core.types import LayerRange, NodeId, Plan
from server.health import MIN_SAMPLES, SpeedWatch, StepTimes
from server.links import VolunteerLink
from server.planner import plan as make_plan
from server.planner import head_layer_equivalent, should_replan
from server.repair import merged, repair_plan
from server.routing import route
from server.validation import TrustPolicy, Verdict, VolunteerTrust
from server.verifier import Auditor, Verifier

if TYPE_CHECKING:
    from core.store.store import StoredModel
    from server.config import CoordinatorConfig

log = logging.getLogger(__name__)

PROFILE_WAIT_S = 60.0
"""A volunteer that never reports a measured profile is planned with its join profile after this."""
WATCH_INTERVAL_S = 0.25
"""How often observed speeds are compared with the plan."""
SPARE_DELAY_S = 3.0
"""Hot spares start loading this long after a plan change, once moved sessions have replayed."""
QUARANTINE_MESSAGE = "quarantined: your results disagreed with the pool's checks"


@dataclass(frozen=True, slots=True)
class Stage:
    """One live stage of a pipeline: the volunteer and the assignment it loaded."""

    link: VolunteerLink
    assignment_id: str
    start: int
    end: int


@dataclass(slots=True, eq=False)
class LivePipeline:
    """A ready pipeline and the sessions currently running on it.

    ``retired`` is set when the pool no longer sends new sessions here; ``switch``
    says whether running sessions should move at their next token (re-plan, failure)
    or may finish here (a draining volunteer). ``tainted`` is set when one of its
    volunteers was quarantined: stage inputs recorded on it may be wrong, so its sessions
    rebuild from their token ids.
    """

    stages: tuple[Stage, ...]
    bottleneck_s: float
    sessions: int = 0
    retired: bool = False
    switch: bool = False
    tainted: bool = False

    @property
    def alive(self) -> bool:
        return all(not s.link.closed.is_set() for s in self.stages)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The layer index where each stage starts."""
        return tuple(s.start for s in self.stages)

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

    def __init__(self, config: CoordinatorConfig, model: StoredModel, *, identity: Identity | None = None) -> None:
        self.config = config
        self.identity = identity  # the pool key that signs assignments (unsigned without one)
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
        self.retired: list[LivePipeline] = []
        self.events = PoolEventLog()
        self.ready = asyncio.Event()
        self.last_error: str | None = None
        self.replans = 0
        self.failures = 0
        self.closing = False
        self.departed: list[VolunteerLink] = []  # closed links whose last contributions are not yet recorded
        self._last_switch = float("-inf")
        self._planned_speed: dict[NodeId, float] = {}
        self._watches: dict[NodeId, SpeedWatch] = {}
        self._changed = asyncio.Event()
        self._urgent = False  # a serving volunteer failed: plan without waiting for joins to settle
        self._broken: LivePipeline | None = None  # the pipeline a failure broke, to repair in place
        self.spares: dict[NodeId, list[tuple[str, tuple[int, int]]]] = {}  # idle volunteer -> its (assignment, stage) copies
        self._tasks: list[asyncio.Task[None]] = []
        self.auditor = Auditor(
            Verifier(model, dtype=config.dtype, max_tokens=config.context_tokens),
            TrustPolicy(config.verify_share, config.probation_steps, config.strikes_to_quarantine),
            dtype=config.dtype, on_strike=self._on_strike, on_quarantine=self.quarantine,
        )
        self.quarantined: dict[NodeId, dict[str, object]] = {}  # what the views show of them, since start
        self.on_quarantine: Callable[[NodeId, str], None] | None = None  # persists one (the coordinator bans the key)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._plan_loop(), name="pool-planner"))
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="pool-speed-watch"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.auditor.close()

    # --- events from links -----------------------------------------------------------

    def add(self, link: VolunteerLink) -> None:
        if link.closed.is_set():
            return
        if link.node_id in self.quarantined:
            asyncio.create_task(link.channel.fail(_quarantine_error()))
            return
        old = self.links.get(link.node_id)
        if old is not None and not old.closed.is_set():
            log.info("volunteer %s reconnected; dropping its old connection", link.name)
            asyncio.create_task(old.channel.close(4000, "replaced by a new connection"))
        self.links[link.node_id] = link
        self.events.add("join", f"{link.name} joined ({link.profile.device}, {link.profile.memory_bytes / 2**30:.1f} GiB)")
        asyncio.create_task(self._profile_deadline(link))

    async def _profile_deadline(self, link: VolunteerLink) -> None:
        try:
            await asyncio.wait_for(link.profiled.wait(), PROFILE_WAIT_S)
        except TimeoutError:
            log.warning("%s sent no measured profile; planning with its join profile", link.name)
            link.profiled.set()
            self._changed.set()

    def on_link_event(self, link: VolunteerLink, event: object) -> None:
        if event == "closed":
            if self.links.get(link.node_id) is link:
                del self.links[link.node_id]
            self.departed.append(link)
            used = any(s.link is link for p in self.pipelines + self.retired for s in p.stages)
            if used:
                self.failures += 1
            self.events.add("failure" if used and not link.draining else "leave", f"{link.name} left: {link.close_reason}")
            for p in self.pipelines:
                if not p.alive:
                    self._broken = self._broken or p
                    p.retired, p.switch = True, True
            self._prune()
            self._urgent = used
            self._changed.set()
        elif isinstance(event, Drain):
            self.events.add("drain", f"{link.name} is draining: {event.reason}")
            for p in self.pipelines:
                if any(s.link is link for s in p.stages):
                    p.retired = True
            self._prune()
            self._changed.set()
        elif isinstance(event, ProfileUpdate):
            self.events.add(
                "benchmark",
                f"{link.name}: {link.profile.seconds_per_layer * 1000:.2f} ms per layer, "
                f"rtt {link.profile.rtt_s * 1000:.1f} ms",
            )
            self._changed.set()

    def _prune(self) -> None:
        """Move retired pipelines out of service; forget them once no session uses them."""
        self.retired.extend(p for p in self.pipelines if p.retired)
        self.pipelines = [p for p in self.pipelines if not p.retired]
        self.retired = [p for p in self.retired if p.sessions > 0]
        if not self.pipelines:
            self.ready.clear()

    # --- planning --------------------------------------------------------------------

    async def _plan_loop(self) -> None:
        while True:
            await self._changed.wait()
            if not self._urgent:
                await asyncio.sleep(self.config.settle_s)
            self._urgent = False
            self._changed.clear()
            try:
                await self._replan_if_needed()
                await self._release_drained()
                await self._refresh_spares()
                await self._collect_assignments()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad round
                log.exception("planning failed")
                self.last_error = str(exc)

    def _candidates(self) -> list[VolunteerLink]:
        return [
            l for l in self.links.values()
            if not l.draining and not l.closed.is_set() and l.profiled.is_set() and l.node_id not in self.quarantined
        ]

    def _profiles(self) -> dict[NodeId, object]:
        return {l.node_id: l.profile for l in self.links.values() if not l.closed.is_set() and not l.draining}

    async def _replan_if_needed(self) -> None:
        candidates = self._candidates()
        serving = bool(self.pipelines)
        if len(candidates) < self.config.min_volunteers and self.replans == 0:
            self.last_error = f"waiting for volunteers: {len(candidates)} of {self.config.min_volunteers} ready"
            return
        if not candidates:
            return
        if not serving and self._broken is not None:
            broken, self._broken = self._broken, None
            if await self._repair(broken, candidates):
                return
        try:
            candidate = make_plan(self.spec, [l.profile for l in candidates], max_pipelines=self.config.max_pipelines)
        except InsufficientCapacity as exc:
            self.last_error = str(exc)
            if not serving:
                self.events.add("capacity", str(exc))
                log.warning("%s", exc)
            return
        if serving:
            wait = self._last_switch + self.config.rebalance_cooldown_s - time.monotonic()
            if wait > 0:  # optional re-plans are rate-limited so the pool does not thrash
                asyncio.get_running_loop().call_later(wait, self._changed.set)
                return
            profiles = self._profiles()
            current = Plan(tuple(merged(_as_plan_pipeline(p), self.spec, profiles) for p in self.pipelines))
            if not should_replan(current, candidate, min_gain=self.config.min_gain):
                return
        live = await self._activate(candidate)
        if not live:
            return
        self._install(candidate, live, "rebalance" if self.replans > 0 else "plan")

    async def _repair(self, broken: LivePipeline, candidates: list[VolunteerLink]) -> bool:
        """Put a pipeline a failure broke back in service, moving only the lost layers.

        See :mod:`server.repair`. The survivors keep their loaded stages (and the
        sessions' caches on them), so a moved session replays only the lost layers. The
        optimal plan is considered again after the cooldown. False if no repair fits.
        """
        current = {l.node_id: l for l in candidates}
        lost = frozenset(s.link.node_id for s in broken.stages if current.get(s.link.node_id) is not s.link)
        survivors = {s.link.node_id for s in broken.stages} - lost
        idle = [n for n in current if n not in survivors and not any(
            s.link.node_id == n for p in self.pipelines for s in p.stages
        )]
        ready = {
            n: [state.layers for state in l.loads.values() if state.ready.is_set()] for n, l in current.items()
        }
        repaired = repair_plan(
            self.spec, _as_plan_pipeline(broken), lost, {n: l.profile for n, l in current.items()}, idle=idle, ready=ready
        )
        if repaired is None:
            return False
        plan = Plan((merged(repaired, self.spec, {n: l.profile for n, l in current.items()}),))
        live = await self._activate(Plan((repaired,)))
        if not live:
            return False
        live[0].bottleneck_s = plan.bottleneck_s
        self._install(plan, live, "repair")
        asyncio.get_running_loop().call_later(self.config.rebalance_cooldown_s, self._changed.set)
        return True

    def _install(self, plan: Plan, live: list[LivePipeline], kind: str) -> None:
        """Serve ``live`` from now on; pipelines in service until now finish or move their sessions."""
        for p in self.pipelines:
            p.retired, p.switch = True, True
        self._prune()
        self._broken = None
        self.pipelines = live
        self.plan = plan
        self.replans += 1
        self._last_switch = time.monotonic()
        self.last_error = None
        self._planned_speed = {s.link.node_id: s.link.profile.seconds_per_layer for p in live for s in p.stages}
        self._watches = {}
        for p in live:  # speeds are measured afresh on the new layer ranges
            for s in p.stages:
                s.link.times = StepTimes()
        self.ready.set()
        if self.auditor.active:  # build the checking shards before the first checks need them
            self.auditor.verifier.warm(LayerRange(s.start, s.end, self.model_config.num_layers) for p in live for s in p.stages)
        self.events.add(kind, "plan: " + "; ".join(
            ", ".join(f"{s.link.name} [{s.start}, {s.end})" for s in p.stages) for p in live
        ))

    async def _activate(self, new_plan: Plan) -> list[LivePipeline]:
        """Make every stage of ``new_plan`` ready (reusing loaded assignments); [] if that fails."""
        pending: list[tuple[int, Stage, asyncio.Event]] = []
        for index, pipeline in enumerate(new_plan.pipelines):
            for planned in pipeline.stages:
                link = self.links.get(planned.node_id)
                if link is None or link.closed.is_set():
                    self._changed.set()
                    return []
                reuse = next(
                    (s for s in link.loads.values() if s.layers == planned.layers and s.ready.is_set()), None
                )
                if reuse is not None:
                    stage = Stage(link, reuse.assignment_id, planned.layers.start, planned.layers.end)
                    pending.append((index, stage, reuse.ready))
                    continue
                assignment = self._assignment(planned.layers)
                cost = len(planned.layers) + (head_layer_equivalent(self.spec) if planned.layers.is_last else 0.0)
                state = await link.assign(assignment, cost_layers=cost)
                pending.append((index, Stage(link, assignment.assignment_id, planned.layers.start, planned.layers.end), state.ready))
        await _wait_all_ready(
            [ev for _, _, ev in pending], [s.link.closed for _, s, _ in pending], timeout_s=self.config.load_timeout_s
        )
        if any(s.link.closed.is_set() for _, s, _ in pending) or not all(ev.is_set() for _, _, ev in pending):
            self.events.add("plan", "a volunteer left or failed while loading; planning again")
            self._changed.set()
            return []
        return [
            LivePipeline(tuple(s for i, s, _ in pending if i == index), pipeline.bottleneck_s)
            for index, pipeline in enumerate(new_plan.pipelines)
        ]

    def _assignment(self, layers: LayerRange) -> Assign:
        names = shard_tensor_names(self.model_config, layers)
        entries = [self.model.manifest.tensors[n] for n in names]
        assign = Assign(
            assignment_id=uuid.uuid4().hex[:16],
            model_id=self.model.manifest.model_id,
            model_name=self.model.manifest.name,
            hf_config=dict(self.model.hf_config),
            layers=layers,
            dtype=self.config.dtype,
            tensors=tuple(TensorSpec(name=e.name, dtype=e.dtype, shape=tuple(e.shape), nbytes=e.nbytes, sha256=e.sha256) for e in entries),
            max_tokens=self.config.context_tokens,
            signature=UNSIGNED,
        )
        return assign if self.identity is None else sign_assignment(self.identity, assign)

    async def _refresh_spares(self) -> None:
        """Have each idle volunteer hold copies of serving stages, ready to take over.

        A spare takes copies of as many stages as its memory holds, the least-covered and
        largest first, so a loss of any stage usually finds a ready copy; copies of stages
        still served are kept. They load in the background and serve nothing until a
        repair (:mod:`server.repair`) picks one.
        """
        if not self.config.hot_spares or not self.pipelines:
            self.spares = {}
            return
        wait = self._last_switch + SPARE_DELAY_S - time.monotonic()
        if wait > 0:  # not while moved sessions replay: loading would slow them down
            asyncio.get_running_loop().call_later(wait, self._changed.set)
            return
        serving = {s.link.node_id for p in self.pipelines for s in p.stages}
        ranges = sorted({(s.start, s.end) for p in self.pipelines for s in p.stages}, key=lambda r: (r[0] - r[1], r[0]))
        total = self.model_config.num_layers
        spares: dict[NodeId, list[tuple[str, tuple[int, int]]]] = {}
        for link in [l for l in self._candidates() if l.node_id not in serving]:
            kept = [(aid, r) for aid, r in self.spares.get(link.node_id, []) if r in ranges and aid in link.loads]
            spares[link.node_id] = kept
        for link in [l for l in self._candidates() if l.node_id in spares]:
            held = spares[link.node_id]
            room = link.profile.memory_bytes - sum(self.spec.stage_bytes(LayerRange(*r, total)) for _, r in held)
            covered = [r for copies in spares.values() for _, r in copies]
            for choice in sorted(ranges, key=lambda r: (covered.count(r), ranges.index(r))):
                layers = LayerRange(*choice, total)
                if any(r == choice for _, r in held) or self.spec.stage_bytes(layers) > room:
                    continue
                assignment = self._assignment(layers)
                cost = len(layers) + (head_layer_equivalent(self.spec) if layers.is_last else 0.0)
                await link.assign(assignment, cost_layers=cost)
                held.append((assignment.assignment_id, choice))
                room -= self.spec.stage_bytes(layers)
                self.events.add("spare", f"{link.name} loads a copy of layers {layers} as a hot spare")
        self.spares = {node: copies for node, copies in spares.items() if copies}

    async def _collect_assignments(self) -> None:
        """Drop assignments that no pipeline in service or still finishing uses."""
        used = {(s.link.node_id, s.assignment_id) for p in self.pipelines + self.retired for s in p.stages}
        used |= {(node, aid) for node, copies in self.spares.items() for aid, _ in copies}
        for link in list(self.links.values()):
            for aid, state in list(link.loads.items()):
                if (link.node_id, aid) not in used and state.ready.is_set():
                    await link.unassign(aid)

    async def _release_drained(self) -> None:
        """Let draining volunteers go once no running session needs them.

        By now a replacement plan without them is live if the rest of the pool can hold the
        model; if it cannot, new requests wait for capacity.
        """
        for link in [l for l in self.links.values() if l.draining and not l.closed.is_set()]:
            if any(p.sessions for p in self.pipelines + self.retired for s in p.stages if s.link is link):
                self._changed.set()  # look again when its sessions end
                continue
            self.events.add("leave", f"{link.name} drained and was released")
            await link.channel.bye("drained")

    # --- observed speed ----------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            self.check_speeds(now=time.monotonic())

    def check_speeds(self, *, now: float) -> None:
        """Re-plan when a volunteer in the plan has run slower or faster than planned for a while."""
        for node_id, planned in list(self._planned_speed.items()):
            link = self.links.get(node_id)
            if link is None or link.times.samples < MIN_SAMPLES:
                continue
            observed = link.times.decode_s_per_layer
            watch, triggered = self._watches.get(node_id, SpeedWatch()).observe(planned_s=planned, observed_s=observed, now=now)
            self._watches[node_id] = watch
            if triggered and observed is not None:
                link.profile = replace(link.profile, seconds_per_layer=observed)
                self._planned_speed[node_id] = observed
                direction = "slower" if observed > planned else "faster"
                self.events.add(
                    "slowdown" if observed > planned else "speedup",
                    f"{link.name} runs {direction} than planned ({observed * 1000:.2f} vs {planned * 1000:.2f} ms per layer)",
                )
                self._changed.set()

    # --- sessions --------------------------------------------------------------------

    async def acquire_pipeline(self, *, deadline: float | None = None) -> LivePipeline:
        """The ready pipeline that will finish a new session soonest; waits (bounded) for one."""
        if deadline is None:
            deadline = time.monotonic() + self.config.request_wait_s
        while True:
            if self.closing:
                raise PoolUnavailable("the coordinator is shutting down", hint="send the request again when the pool is back")
            live = [p for p in self.pipelines if p.alive and not p.retired]
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
                await asyncio.wait_for(self.ready.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    def release_pipeline(self, pipeline: LivePipeline) -> None:
        pipeline.sessions = max(0, pipeline.sessions - 1)
        if pipeline.retired or any(s.link.draining for s in pipeline.stages):
            self._prune()
            self._changed.set()

    def report_failure(self, link: VolunteerLink | None, reason: str) -> None:
        """A session saw a stage fail on ``link``: stop using that connection (it is closed).

        The connection object is named, not the node: a volunteer that already came back
        on a new connection must not be thrown out for its old one's failure.
        """
        if link is not None and not link.closed.is_set():
            link.close_reason = reason
            asyncio.create_task(link.channel.close(4005, "stage failed"))
        for p in self.pipelines:
            if link is not None and any(s.link is link for s in p.stages):
                self._broken = self._broken or p
                p.retired, p.switch = True, True
        self._prune()
        self._urgent = True
        self._changed.set()

    # --- trust -----------------------------------------------------------------------

    def _on_strike(self, link: VolunteerLink, trust: VolunteerTrust, verdict: Verdict) -> None:
        self.events.add(
            "strike",
            f"{link.name} disagreed with the pool's check ({verdict.reason}); "
            f"strike {trust.strikes} of {self.auditor.ledger.policy.strikes_to_quarantine}",
        )

    def quarantine(self, link: VolunteerLink, trust: VolunteerTrust) -> None:
        """Stop using a volunteer whose results disagreed too often; the pool re-plans without it.

        Its connection is closed with an error saying why, ``on_quarantine`` persists the
        decision, and every pipeline it served is retired and marked ``tainted``: their
        sessions move at their next token and rebuild from their token ids.
        """
        reason = f"{QUARANTINE_MESSAGE} ({trust.strikes} disagreements in {trust.audits} checks)"
        self.quarantined[link.node_id] = {
            "name": link.name, "os": link.os_name, "device": link.profile.device,
            "memory_bytes": link.profile.memory_bytes, "steps": link.steps_served, "at": time.time(),
        }
        self.events.add("quarantine", f"{link.name} was quarantined after {trust.strikes} disagreements "
                                      f"in {trust.audits} checks ({link.steps_served} steps served)")
        for p in self.pipelines + self.retired:
            if any(s.link is link for s in p.stages):
                if p in self.pipelines:
                    self._broken = self._broken or p
                p.tainted, p.retired, p.switch = True, True, True
        if self.on_quarantine is not None:
            try:
                self.on_quarantine(link.node_id, reason)
            except ButterflyError as exc:
                log.warning("could not record the quarantine of %s: %s", link.name, exc)
        if not link.closed.is_set():
            link.close_reason = reason
            asyncio.create_task(link.channel.fail(_quarantine_error()))
        self._prune()
        self._urgent = True
        self._changed.set()

    def _trust_view(self, node_id: NodeId) -> dict[str, object]:
        trust = self.auditor.trust(node_id)
        return {"trust": trust.state.value, "strikes": trust.strikes, "verified_steps": trust.verified_steps}

    # --- views -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The pool as plain data (for status pages, the CLI and tests)."""
        return {
            "model": {"id": self.model.manifest.model_id, "name": self.model.manifest.name, "layers": self.model_config.num_layers},
            "ready": bool(self.pipelines),
            "last_error": self.last_error,
            "replans": self.replans,
            "failures": self.failures,
            "volunteers": [
                {
                    "node_id": l.node_id,
                    "name": l.name,
                    "os": l.os_name,
                    "device": l.profile.device,
                    "memory_bytes": l.profile.memory_bytes,
                    "seconds_per_layer": l.profile.seconds_per_layer,
                    "observed_seconds_per_layer": l.times.decode_s_per_layer,
                    "rtt_ms": None if l.rtt_s is None else round(l.rtt_s * 1000, 3),
                    "draining": l.draining,
                    "steps": l.steps_served,
                    "handed_off_steps": l.handed_off_steps,
                    "layers": [
                        [s.start, s.end] for p in self.pipelines for s in p.stages if s.link is l
                    ],
                    **self._trust_view(l.node_id),
                }
                for l in self.links.values()
                if l.node_id not in self.quarantined
            ] + [
                {
                    "node_id": node_id, "name": q["name"], "os": q["os"], "device": q["device"],
                    "memory_bytes": q["memory_bytes"], "seconds_per_layer": 0.0, "observed_seconds_per_layer": None,
                    "rtt_ms": None, "draining": False, "steps": q["steps"], "handed_off_steps": 0, "layers": [],
                    **self._trust_view(node_id),
                }
                for node_id, q in self.quarantined.items()
            ],
            "pipelines": [p.describe() for p in self.pipelines],
            "events": self.events.entries[-50:],
        }


async def _wait_all_ready(ready: list[asyncio.Event], closed: list[asyncio.Event], *, timeout_s: float) -> None:
    """Wait until every ``ready`` event is set, any ``closed`` event is set, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while not all(ev.is_set() for ev in ready) and not any(ev.is_set() for ev in closed):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        tasks = [asyncio.create_task(ev.wait()) for ev in ready if not ev.is_set()]
        tasks += [asyncio.create_task(ev.wait()) for ev in closed]
        try:
            await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()


def _as_plan_pipeline(p: LivePipeline):  # noqa: ANN202 - core.types.Pipeline
    from core.types import Pipeline, StageAssignment

    total = p.stages[-1].end
    return Pipeline(tuple(StageAssignment(s.link.node_id, LayerRange(s.start, s.end, total)) for s in p.stages))


def _quarantine_error() -> AuthFailed:
    return AuthFailed(
        QUARANTINE_MESSAGE,
        hint="check this machine's hardware and Butterfly install; the host can lift it (unban the key)",
    )


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
