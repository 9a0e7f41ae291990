"""Repair a broken pipeline by moving as little as possible (pure).

When a volunteer vanishes mid-request, the fastest way back is not the optimal plan
over the survivors: that plan usually moves every boundary, so every survivor loads
new layers and every stage must replay the session. :func:`repair_plan` instead keeps
each surviving stage exactly as it is (its loaded layers and its sessions' caches stay
valid) and covers only the lost layers ("gaps"):

- an idle volunteer (connected but not in the plan) whose memory holds the whole gap;
- the two survivors next to the gap, each taking one part as an extra stage (split to
  balance their whole load, within what their memory has left);
- a single survivor with room for the whole gap.

Of these, the one ready soonest wins: loads run in parallel, so the fewest layers any
one volunteer must fetch and build; ties go to the fastest resulting stage. Idle
volunteers are kept as *hot spares* holding a copy of a serving stage (see
:meth:`server.pool.Pool`), so the usual repair loads nothing at all: the spare's copy is
ready, and only the session's steps on those layers are replayed. An idle volunteer left
out now is brought in by the next optimal re-plan.

If no gap can be covered this way the result is ``None`` and the pool falls back to a
full plan. The repaired pipeline may visit a volunteer twice (its old stage and a gap
stage next to it); :func:`merged` folds such neighbours into one stage so the
rebalancer compares the repair with the optimum on honest estimates and moves to the
optimum later, make-before-break, when that is worth it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from core.types import HardwareProfile, LayerRange, ModelSpec, NodeId, Pipeline, StageAssignment
from server.planner import stage_time_s


def _gaps(pipeline: Pipeline, lost: frozenset[NodeId]) -> list[tuple[int, int]]:
    """Maximal runs of layers whose stage is on a lost volunteer, as (start, end)."""
    runs: list[tuple[int, int]] = []
    for stage in pipeline.stages:
        if stage.node_id not in lost:
            continue
        if runs and runs[-1][1] == stage.layers.start:
            runs[-1] = (runs[-1][0], stage.layers.end)
        else:
            runs.append((stage.layers.start, stage.layers.end))
    return runs


def _used_bytes(model: ModelSpec, stages: Sequence[StageAssignment], node: NodeId) -> int:
    return sum(model.stage_bytes(s.layers) for s in stages if s.node_id == node)


def _free(model: ModelSpec, stages: Sequence[StageAssignment], node: NodeId, profiles: Mapping[NodeId, HardwareProfile]) -> int:
    return profiles[node].memory_bytes - _used_bytes(model, stages, node)


def _time(model: ModelSpec, layers: LayerRange, profile: HardwareProfile) -> float:
    return stage_time_s(model, layers, profile)


def _cover(
    model: ModelSpec,
    stages: list[StageAssignment],
    gap: tuple[int, int],
    profiles: Mapping[NodeId, HardwareProfile],
    idle: list[NodeId],
    ready: Mapping[NodeId, Collection[LayerRange]],
) -> list[StageAssignment] | None:
    """New stages covering ``gap`` (in layer order), or ``None`` if nobody can hold it.

    Of the ways that fit, the one that is ready soonest wins: the fewest layers any one
    volunteer must load (loads run in parallel; a range a volunteer already holds ready
    costs nothing); then the fastest resulting stage.
    """

    def to_load(node: NodeId, layers: LayerRange) -> int:
        return 0 if layers in ready.get(node, ()) else len(layers)

    total = model.num_layers
    start, end = gap
    whole = LayerRange(start, end, total)
    options: list[tuple[int, float, list[StageAssignment]]] = []
    for n in idle:
        cost = _time(model, whole, profiles[n])
        if model.stage_bytes(whole) <= profiles[n].memory_bytes and math.isfinite(cost):
            options.append((to_load(n, whole), cost, [StageAssignment(n, whole, cost)]))
    left = next((s.node_id for s in stages if s.layers.end == start), None)
    right = next((s.node_id for s in stages if s.layers.start == end), None)
    if left is not None and right is not None and left != right and end - start >= 2:
        split = _split(model, stages, gap, left, right, profiles)
        if split is not None:
            worst = max(_load(model, stages + split, s.node_id, profiles) for s in split)
            options.append((max(to_load(s.node_id, s.layers) for s in split), worst, split))
    for n in {s.node_id for s in stages}:
        if model.stage_bytes(whole) <= _free(model, stages, n, profiles):
            cover = [StageAssignment(n, whole, _time(model, whole, profiles[n]))]
            options.append((to_load(n, whole), _load(model, stages + cover, n, profiles), cover))
    if not options:
        return None
    best = min(options, key=lambda o: (o[0], o[1], [s.node_id for s in o[2]]))
    for s in best[2]:
        if s.node_id in idle:
            idle.remove(s.node_id)
    return best[2]


def _load(model: ModelSpec, stages: Sequence[StageAssignment], node: NodeId, profiles: Mapping[NodeId, HardwareProfile]) -> float:
    """Seconds per token ``node`` spends on all its stages."""
    return sum(_time(model, s.layers, profiles[node]) for s in stages if s.node_id == node)


def _split(
    model: ModelSpec,
    stages: list[StageAssignment],
    gap: tuple[int, int],
    left: NodeId,
    right: NodeId,
    profiles: Mapping[NodeId, HardwareProfile],
) -> list[StageAssignment] | None:
    """Split ``gap`` at the layer that best balances the two neighbours' whole load."""
    total = model.num_layers
    start, end = gap
    left_free = _free(model, stages, left, profiles)
    right_free = _free(model, stages, right, profiles)
    best: tuple[float, int] | None = None
    for cut in range(start + 1, end):
        a, b = LayerRange(start, cut, total), LayerRange(cut, end, total)
        if model.stage_bytes(a) > left_free or model.stage_bytes(b) > right_free:
            continue
        load_left = sum(_time(model, s.layers, profiles[left]) for s in stages if s.node_id == left)
        load_right = sum(_time(model, s.layers, profiles[right]) for s in stages if s.node_id == right)
        worst = max(load_left + _time(model, a, profiles[left]), load_right + _time(model, b, profiles[right]))
        if math.isfinite(worst) and (best is None or worst < best[0]):
            best = (worst, cut)
    if best is None:
        return None
    cut = best[1]
    a, b = LayerRange(start, cut, total), LayerRange(cut, end, total)
    return [
        StageAssignment(left, a, _time(model, a, profiles[left])),
        StageAssignment(right, b, _time(model, b, profiles[right])),
    ]


def repair_plan(
    model: ModelSpec,
    broken: Pipeline,
    lost: frozenset[NodeId],
    profiles: Mapping[NodeId, HardwareProfile],
    idle: Sequence[NodeId] = (),
    ready: Mapping[NodeId, Collection[LayerRange]] | None = None,
) -> Pipeline | None:
    """``broken`` with every stage on a ``lost`` volunteer replaced, surviving stages untouched.

    ``profiles`` must hold every surviving and idle volunteer; ``idle`` are volunteers
    that serve no stage; ``ready`` the layer ranges each volunteer already holds loaded
    (a hot spare's copy of a stage), which cost no loading. Returns ``None`` when nothing is lost, when no stage survives,
    or when some lost layers fit nowhere. Memory is checked per volunteer over all the
    stages it would hold; stages are returned in layer order.
    """
    survivors = [s for s in broken.stages if s.node_id not in lost]
    if not survivors or len(survivors) == len(broken.stages):
        return None
    if any(s.node_id not in profiles for s in survivors):
        return None
    stages = list(survivors)
    spare = [n for n in idle if n in profiles and n not in lost and all(s.node_id != n for s in stages)]
    for gap in _gaps(broken, lost):
        cover = _cover(model, stages, gap, profiles, spare, ready or {})
        if cover is None:
            return None
        stages.extend(cover)
    stages.sort(key=lambda s: s.layers.start)
    return Pipeline(tuple(stages))


def merged(pipeline: Pipeline, model: ModelSpec, profiles: Mapping[NodeId, HardwareProfile]) -> Pipeline:
    """``pipeline`` with neighbouring stages on one volunteer folded into one, re-estimated.

    A volunteer serving ``[a, b)`` and ``[b, c)`` computes ``[a, c)`` per token; judging
    the stages apart would make a repaired pipeline look faster than it is.
    """
    folded: list[StageAssignment] = []
    for stage in pipeline.stages:
        if folded and folded[-1].node_id == stage.node_id and folded[-1].layers.end == stage.layers.start:
            prev = folded.pop()
            stage = StageAssignment(stage.node_id, LayerRange(prev.layers.start, stage.layers.end, stage.layers.total))
        folded.append(stage)
    return Pipeline(
        tuple(
            StageAssignment(
                s.node_id,
                s.layers,
                stage_time_s(model, s.layers, profiles[s.node_id]) if s.node_id in profiles else math.inf,
            )
            for s in folded
        )
    )


__all__ = ["merged", "repair_plan"]
