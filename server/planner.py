"""Placement of a model's decoder layers on volunteers: the exact bottleneck planner.

Every function here is pure: the same model and profiles give the same plan, in any
input order (volunteers are considered in ``node_id`` order and ties go to the
smaller id). Nothing reads a clock or a global random generator.

Cost model
----------
One decode step of one token passes every stage of a pipeline in order, so a
pipeline serves one token per *bottleneck*: the slowest stage's step time. A stage
holding ``layers`` on volunteer ``v`` takes (:func:`stage_time_s`)::

    (len(layers) + extra_layers) * v.seconds_per_layer  +  v.rtt_s + wire_bytes / v.bandwidth_bytes_per_s

* ``extra_layers`` prices the ends of the model in layer equivalents of the same
  volunteer. A decode step reads every weight once and is bound by memory
  bandwidth, so a part costs in proportion to the bytes it reads. The token
  embedding is a row gather that reads one row of its table, next to nothing:
  :data:`EMBED_LAYER_EQUIVALENT` is 0. The final norm plus LM head is a
  matrix-vector product over all ``head_bytes``: it costs
  :func:`head_layer_equivalent` = ``head_bytes / layer_bytes`` layers.
* The transfer term: hidden states are relayed through the coordinator, so every
  stage pays one round trip per step plus the bytes crossing its own link, inbound
  and outbound. The first stage receives token ids (counted as 0 bytes), every
  other stage a hidden state (``activation_bytes``). Every stage sends one
  ``activation_bytes``: a hidden state, or for the last stage the step's result for
  the coordinator's sampler, which is assumed to be no larger than a hidden state.
  So the first (or only) stage moves ``activation_bytes``, all others twice that.
  An unknown link (``rtt_s`` 0, bandwidth infinite) costs nothing.

Memory: a stage must fit its volunteer, ``model.stage_bytes(layers) <=
profile.memory_bytes`` (weights plus KV budget; the first stage also holds the
embedding, the last the head).

Algorithm
---------
The optimal bottleneck is one of the finite set of values ``(k + e_r) * t_i + c_ir``
(volunteer ``i``, role ``r`` in first/middle/last/only, ``k`` layers within the
memory cap). We sort that set and binary-search it with an exact O(n log n)
feasibility test: at a bound ``B`` each volunteer can take at most ``cap_r(i)``
layers in role ``r`` (time and memory both monotone in ``k``); a pipeline exists
iff one volunteer can hold everything alone, or some distinct pair ``f != l`` has
``cap_first(f) + cap_last(l) + sum of the positive cap_middle of all others >= L``.
At the optimal bound we then take the fewest stages (fewer hops, lower latency per
token), then the most spare capacity, then the smaller node ids, and split the layers
so the stage times are as even as possible: start every stage at its cap and take the
surplus away one layer at a time from the currently slowest stage.

Volunteers with no measured speed (``seconds_per_layer <= 0``), no memory, or a
negative, NaN or zero-bandwidth link are skipped.

When the usable volunteers cannot hold the model at all, :class:`InsufficientCapacity`
carries ``missing_bytes``: the smallest number of bytes that, added to the memory
of one usable volunteer (the best choice, named in the hint), makes the pool able to
hold the model; adding one byte less to any single volunteer does not. With no
usable volunteer it is the whole model's size (one volunteer holding every layer).

The baselines at the end (:func:`uniform_plan`, :func:`memory_proportional_plan`,
:func:`greedy_binpack_plan`, and :func:`proportional_plan`, which also serves as a
simple fallback) exist to measure the planner against; see their docstrings.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError, InsufficientCapacity, PoolUnavailable
from core.types import (
    HardwareProfile,
    LayerRange,
    ModelSpec,
    NodeId,
    Pipeline,
    Plan,
    StageAssignment,
)

EMBED_LAYER_EQUIVALENT = 0.0
"""Compute cost of the token embedding in decoder-layer equivalents (a row gather)."""

GIB = 1 << 30

_FIRST, _MIDDLE, _LAST, _ONLY = 0, 1, 2, 3
_ROLES = (_FIRST, _MIDDLE, _LAST, _ONLY)
_EPS = 1e-9  # slack in layer counts when comparing a stage time with a candidate bound
_NONE = -(1 << 40)  # "no such volunteer" in integer capacity arithmetic


# --------------------------------------------------------------------------- cost model


def head_layer_equivalent(model: ModelSpec) -> float:
    """Compute cost of final norm + LM head in decoder-layer equivalents.

    Decode is bound by reading weights, so the head costs ``head_bytes / layer_bytes``
    layers; 0 when the model reports no per-layer weights.
    """
    return model.head_bytes / model.layer_bytes if model.layer_bytes > 0 else 0.0


def _role(layers: LayerRange) -> int:
    if layers.is_first and layers.is_last:
        return _ONLY
    if layers.is_first:
        return _FIRST
    if layers.is_last:
        return _LAST
    return _MIDDLE


def _extra_layers(model: ModelSpec, role: int) -> float:
    head = head_layer_equivalent(model)
    return (EMBED_LAYER_EQUIVALENT, 0.0, head, EMBED_LAYER_EQUIVALENT + head)[role]


def _wire_bytes(model: ModelSpec, role: int) -> int:
    inbound = 0 if role in (_FIRST, _ONLY) else model.activation_bytes
    return inbound + model.activation_bytes


def _link_s(model: ModelSpec, role: int, profile: HardwareProfile) -> float:
    return profile.rtt_s + _wire_bytes(model, role) / profile.bandwidth_bytes_per_s


def _is_usable(profile: HardwareProfile) -> bool:
    return (
        math.isfinite(profile.seconds_per_layer)
        and profile.seconds_per_layer > 0
        and profile.memory_bytes > 0
        and math.isfinite(profile.rtt_s)
        and profile.rtt_s >= 0
        and profile.bandwidth_bytes_per_s > 0  # False for NaN too
    )


def stage_time_s(model: ModelSpec, layers: LayerRange, profile: HardwareProfile) -> float:
    """Estimated decode-step time of ``profile`` serving ``layers``: compute plus transfer.

    See the module docstring for the model. Returns ``inf`` for a volunteer the
    planner would skip (no measured speed, no memory, unusable link). Memory is not
    checked here.
    """
    if not _is_usable(profile):
        return math.inf
    role = _role(layers)
    return (len(layers) + _extra_layers(model, role)) * profile.seconds_per_layer + _link_s(
        model, role, profile
    )


def bottleneck_s(
    model: ModelSpec, pipeline: Pipeline, profiles: Mapping[NodeId, HardwareProfile]
) -> float:
    """The slowest stage of ``pipeline`` re-estimated with ``profiles``.

    A stage whose volunteer has no profile (it left) or an unusable one makes the
    pipeline ``inf``, as does a pipeline without stages.
    """
    if not pipeline.stages:
        return math.inf
    worst = 0.0
    for stage in pipeline.stages:
        profile = profiles.get(stage.node_id)
        if profile is None:
            return math.inf
        worst = max(worst, stage_time_s(model, stage.layers, profile))
    return worst


def with_estimates(
    model: ModelSpec, plan_: Plan, profiles: Mapping[NodeId, HardwareProfile]
) -> Plan:
    """``plan_`` with every ``estimated_step_s`` recomputed from ``profiles``.

    Use it to compare a running plan, under freshly observed profiles, with a new
    candidate; a stage whose volunteer is gone gets ``inf``.
    """
    return Plan(
        tuple(
            Pipeline(
                tuple(
                    StageAssignment(
                        s.node_id,
                        s.layers,
                        stage_time_s(model, s.layers, profiles[s.node_id])
                        if s.node_id in profiles
                        else math.inf,
                    )
                    for s in p.stages
                )
            )
            for p in plan_.pipelines
        )
    )


def should_replan(current: Plan, candidate: Plan, *, min_gain: float = 0.15) -> bool:
    """Whether switching from ``current`` to ``candidate`` is worth a migration.

    Hysteresis on the pool's effective bottleneck, :func:`pool_step_s` (one token
    per that many seconds with every pipeline busy; a single pipeline's bottleneck):
    switch only when ``candidate`` shortens it by at least ``min_gain``, relative.
    Always switch away from an empty or invalid ``current`` (a stage with an
    infinite, NaN or negative estimate, e.g. after :func:`with_estimates` found a
    volunteer gone); never switch to an empty or invalid ``candidate``.
    """
    if not 0.0 <= min_gain < 1.0:
        raise ConfigError(
            f"min_gain must be in [0, 1), got {min_gain}",
            hint="use a small fraction such as 0.15",
        )
    if not _is_valid(candidate):
        return False
    if not _is_valid(current):
        return True
    return pool_step_s(candidate) <= pool_step_s(current) * (1.0 - min_gain)


def pool_step_s(plan_: Plan) -> float:
    """Seconds per token of the whole plan with every pipeline busy: ``1 / sum(1 / bottleneck)``.

    ``inf`` for an empty plan; 0 if a pipeline claims a zero bottleneck.
    """
    rates = [pipe.bottleneck_s for pipe in plan_.pipelines]
    if not rates:
        return math.inf
    if any(b <= 0 for b in rates):
        return 0.0
    return 1.0 / sum(1.0 / b for b in rates)


def _is_valid(p: Plan) -> bool:
    return not p.is_empty and all(
        pipe.stages
        and all(math.isfinite(s.estimated_step_s) and s.estimated_step_s >= 0 for s in pipe.stages)
        for pipe in p.pipelines
    )


# --------------------------------------------------------------------------- the exact planner


@dataclass(frozen=True, slots=True, eq=False)
class _Pool:
    """Usable volunteers (``node_id`` order) with their per-role costs and memory caps."""

    profiles: tuple[HardwareProfile, ...]
    num_layers: int
    seconds: np.ndarray  # (n,) seconds per layer
    link: np.ndarray  # (4, n) transfer seconds per role
    extra: np.ndarray  # (4,) extra layer equivalents per role
    mem_cap: np.ndarray  # (4, n) most layers memory allows per role, -1 if none


def _memory_terms(model: ModelSpec) -> tuple[int, tuple[int, int, int, int]]:
    """Bytes per layer and extra bytes per role, derived from ``ModelSpec.stage_bytes``."""
    per_layer = model.stage_bytes(LayerRange(1, 2, 3))
    embed = model.stage_bytes(LayerRange(0, 1, 3)) - per_layer
    head = model.stage_bytes(LayerRange(2, 3, 3)) - per_layer
    return per_layer, (embed, 0, head, embed + head)


def _layer_cap(memory: int, extra: int, per_layer: int, limit: int) -> int:
    if memory < extra:
        return -1
    if per_layer <= 0:
        return limit
    return min((memory - extra) // per_layer, limit)


def _role_limits(num_layers: int) -> tuple[int, int, int, int]:
    """Most layers a role can take in a pipeline of ``num_layers``; ``-1`` if impossible."""
    ell = num_layers
    return (ell - 1 if ell >= 2 else -1, ell - 2 if ell >= 3 else -1, ell - 1 if ell >= 2 else -1, ell)


def _build_pool(model: ModelSpec, usable: Sequence[HardwareProfile]) -> _Pool:
    ell = model.num_layers
    per_layer, extra_bytes = _memory_terms(model)
    limits = _role_limits(ell)
    mem_cap = np.array(
        [
            [
                _layer_cap(p.memory_bytes, extra_bytes[r], per_layer, limits[r]) if limits[r] > 0 else -1
                for p in usable
            ]
            for r in _ROLES
        ],
        dtype=np.int64,
    ).reshape(4, len(usable))
    mem_cap[_ONLY] = np.where(mem_cap[_ONLY] >= ell, ell, -1)
    return _Pool(
        profiles=tuple(usable),
        num_layers=ell,
        seconds=np.array([p.seconds_per_layer for p in usable], dtype=np.float64),
        link=np.array(
            [[_link_s(model, r, p) for p in usable] for r in _ROLES], dtype=np.float64
        ).reshape(4, len(usable)),
        extra=np.array([_extra_layers(model, r) for r in _ROLES], dtype=np.float64),
        mem_cap=mem_cap,
    )


def _caps(pool: _Pool, bound: float) -> np.ndarray:
    """(4, n) most layers each volunteer can take per role with step time ``<= bound``."""
    with np.errstate(invalid="ignore", over="ignore"):
        k = np.floor((bound - pool.link) / pool.seconds - pool.extra[:, None] + _EPS)
    k = np.nan_to_num(k, nan=-1.0, posinf=float(pool.num_layers), neginf=-1.0)
    caps = np.minimum(np.clip(k, -1, pool.num_layers).astype(np.int64), pool.mem_cap)
    caps[_ONLY] = np.where(caps[_ONLY] >= pool.num_layers, pool.num_layers, -1)
    return caps


def _end_gains(caps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive middle caps and what taking the first/last role adds over being a middle."""
    middle = np.maximum(caps[_MIDDLE], 0)
    first = np.where(caps[_FIRST] >= 1, caps[_FIRST] - middle, _NONE)
    last = np.where(caps[_LAST] >= 1, caps[_LAST] - middle, _NONE)
    return middle, first, last


def _top(values: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` largest values above ``_NONE``, ties to the smaller index."""
    order = np.argsort(-values, kind="stable")[:count]
    return [int(i) for i in order if values[i] > _NONE]


def _best_pair(first: np.ndarray, last: np.ndarray, exclude: tuple[int, ...] = ()) -> int:
    """max ``first[f] + last[l]`` over ``f != l`` outside ``exclude``; ``_NONE`` if none."""
    depth = 2 + len(exclude)
    best = _NONE
    for f in _top(first, depth):
        if f in exclude:
            continue
        for l_ in _top(last, depth):
            if l_ != f and l_ not in exclude:
                best = max(best, int(first[f]) + int(last[l_]))
    return best


def _feasible(pool: _Pool, caps: np.ndarray) -> bool:
    ell = pool.num_layers
    if np.any(caps[_ONLY] >= ell):
        return True
    if ell < 2 or not len(pool.profiles):
        return False
    middle, first, last = _end_gains(caps)
    pair = _best_pair(first, last)
    return pair > _NONE and int(middle.sum()) + pair >= ell


def _candidates(pool: _Pool) -> np.ndarray:
    """Every step time a stage could have, sorted (duplicates do not hurt the search)."""
    ell = pool.num_layers
    parts = []
    for role in (_FIRST, _MIDDLE, _LAST):
        top = int(pool.mem_cap[role].max(initial=-1))
        if top < 1:
            continue
        k = np.arange(1, top + 1, dtype=np.float64)
        times = (k[None, :] + pool.extra[role]) * pool.seconds[:, None] + pool.link[role][:, None]
        parts.append(times[k[None, :] <= pool.mem_cap[role][:, None]])
    only = pool.mem_cap[_ONLY] >= ell
    parts.append(((ell + pool.extra[_ONLY]) * pool.seconds + pool.link[_ONLY])[only])
    return np.sort(np.concatenate(parts))


def _optimal_bound(pool: _Pool) -> float | None:
    """The smallest feasible bottleneck, or ``None`` if memory alone rules the model out."""
    if not _feasible(pool, pool.mem_cap):
        return None
    values = _candidates(pool)
    lo, hi = 0, len(values) - 1  # values[hi] is feasible: it admits every memory cap
    while lo < hi:
        mid = (lo + hi) // 2
        if _feasible(pool, _caps(pool, float(values[mid]))):
            hi = mid
        else:
            lo = mid + 1
    return float(values[lo])


def _select(pool: _Pool, bound: float) -> tuple[list[int], list[int], list[int]]:
    """Volunteers (in stage order), their roles and layer caps for the fewest stages at ``bound``."""
    ell = pool.num_layers
    caps = _caps(pool, bound)
    alone = np.flatnonzero(caps[_ONLY] >= ell)
    if len(alone):
        times = (ell + pool.extra[_ONLY]) * pool.seconds[alone] + pool.link[_ONLY][alone]
        i = int(alone[np.lexsort((alone, times))[0]])
        return [i], [_ONLY], [ell]

    n = len(pool.profiles)
    depth = min(n, ell)  # an optimal end is among the `stages` best for its role
    cf, cm, cl = caps[_FIRST], np.maximum(caps[_MIDDLE], 0), caps[_LAST]
    index = np.arange(n)
    firsts = np.array(_top(np.where(cf >= 1, cf, _NONE), depth), dtype=np.int64)
    lasts = np.array(_top(np.where(cl >= 1, cl, _NONE), depth), dtype=np.int64)
    f = np.repeat(firsts, len(lasts))
    l_ = np.tile(lasts, len(firsts))
    keep = f != l_
    f, l_ = f[keep], l_[keep]

    ranked = np.lexsort((index, -cm))
    ranked = ranked[cm[ranked] >= 1]
    rank = np.full(n, n + 1, dtype=np.int64)
    rank[ranked] = np.arange(len(ranked))
    prefix = np.concatenate(([0], np.cumsum(cm[ranked])))

    base = cf[f] + cl[l_]
    need = ell - base
    # Fewest middles: the smallest prefix of the ranked middles, minus f and l, reaching `need`.
    q = np.searchsorted(prefix, need, side="left")
    for _ in range(3):  # each pass can only uncover f or l inside the prefix
        skipped = cm[f] * (rank[f] < q) + cm[l_] * (rank[l_] < q)
        q = np.searchsorted(prefix, need + skipped, side="left")
    q_safe = np.minimum(q, len(prefix) - 1)
    skipped = cm[f] * (rank[f] < q_safe) + cm[l_] * (rank[l_] < q_safe)
    got = prefix[q_safe] - skipped
    ok = (q < len(prefix)) & (got >= need)
    middles = q_safe - (rank[f] < q_safe) - (rank[l_] < q_safe)
    stages = np.where(ok, 2 + middles, np.iinfo(np.int64).max)
    slack = base + got
    best = int(np.lexsort((-l_, f, -slack, stages))[0])  # all else equal: node-id order
    fi, li, m = int(f[best]), int(l_[best]), int(middles[best])
    chosen = sorted([int(i) for i in ranked if i != fi and i != li][:m])
    nodes = [fi, *chosen, li]
    roles = [_FIRST, *([_MIDDLE] * len(chosen)), _LAST]
    return nodes, roles, [int(caps[r][i]) for i, r in zip(nodes, roles)]


def _balanced_counts(pool: _Pool, nodes: list[int], roles: list[int], caps: list[int]) -> list[int]:
    """Layer counts within ``caps`` summing to the model, the slowest stage trimmed first."""

    def time(pos: int, k: int) -> float:
        i, r = nodes[pos], roles[pos]
        return float((k + pool.extra[r]) * pool.seconds[i] + pool.link[r][i])

    counts = list(caps)
    surplus = sum(counts) - pool.num_layers
    heap = [(-time(pos, k), pos) for pos, k in enumerate(counts) if k > 1]
    heapq.heapify(heap)
    while surplus > 0:
        _, pos = heapq.heappop(heap)
        counts[pos] -= 1
        surplus -= 1
        if counts[pos] > 1:
            heapq.heappush(heap, (-time(pos, counts[pos]), pos))
    return counts


def _pipeline(model: ModelSpec, order: Sequence[HardwareProfile], counts: Sequence[int]) -> Pipeline:
    stages = []
    start = 0
    for profile, count in zip(order, counts):
        layers = LayerRange(start, start + count, model.num_layers)
        stages.append(StageAssignment(profile.node_id, layers, stage_time_s(model, layers, profile)))
        start += count
    return Pipeline(tuple(stages))


def _exact_pipeline(model: ModelSpec, usable: Sequence[HardwareProfile]) -> Pipeline | None:
    pool = _build_pool(model, usable)
    bound = _optimal_bound(pool)
    if bound is None:
        return None
    nodes, roles, caps = _select(pool, bound)
    counts = _balanced_counts(pool, nodes, roles, caps)
    return _pipeline(model, [pool.profiles[i] for i in nodes], counts)


def _check_model(model: ModelSpec) -> None:
    if model.num_layers < 1:
        raise ConfigError(
            f"model {model.name!r} has {model.num_layers} layers",
            hint="check the model's config: it needs at least one decoder layer",
        )


def _usable(volunteers: Sequence[HardwareProfile]) -> list[HardwareProfile]:
    seen: set[NodeId] = set()
    for v in volunteers:
        if v.node_id in seen:
            raise ConfigError(
                f"volunteer {v.node_id} is listed twice",
                hint="pass each volunteer's latest profile once",
            )
        seen.add(v.node_id)
    return sorted((v for v in volunteers if _is_usable(v)), key=lambda v: v.node_id)


def plan(
    model: ModelSpec,
    volunteers: Sequence[HardwareProfile],
    *,
    max_pipelines: int = 1,
    min_replica_efficiency: float = 0.5,
) -> Plan:
    """The placement of ``model`` on ``volunteers`` with the smallest possible bottleneck.

    The first pipeline is exact (see the module docstring): no contiguous split over
    any subset and order of the volunteers has a faster slowest stage; among those it
    has the fewest stages, then evenly balanced stage times. Every stage fits its
    volunteer's memory and carries its ``estimated_step_s``.

    With ``max_pipelines > 1`` further pipelines are built, each exact on the
    volunteers not yet used, while each one's bottleneck stays within
    ``1 / min_replica_efficiency`` of the first's. Pipelines cut the model the same
    way where their volunteers are alike; equal ranges in different pipelines are
    replicas of one stage. No volunteer appears twice in the plan.

    Raises :class:`InsufficientCapacity` when the usable volunteers cannot hold the
    model, and :class:`ConfigError` for invalid arguments or a volunteer listed twice.
    """
    _check_model(model)
    if max_pipelines < 1:
        raise ConfigError(
            f"max_pipelines must be at least 1, got {max_pipelines}", hint="use 1 for a single pipeline"
        )
    if not 0.0 < min_replica_efficiency <= 1.0:
        raise ConfigError(
            f"min_replica_efficiency must be in (0, 1], got {min_replica_efficiency}",
            hint="0.5 accepts replicas up to twice as slow as the first pipeline",
        )
    usable = _usable(volunteers)
    first = _exact_pipeline(model, usable)
    if first is None:
        raise insufficient_capacity(model, usable)
    pipelines = [first]
    used = set(first.node_ids)
    limit = first.bottleneck_s / min_replica_efficiency * (1.0 + _EPS)
    while len(pipelines) < max_pipelines:
        rest = [v for v in usable if v.node_id not in used]
        extra = _exact_pipeline(model, rest) if rest else None
        if extra is None or extra.bottleneck_s > limit:
            break
        pipelines.append(extra)
        used.update(extra.node_ids)
    return Plan(tuple(pipelines))


# --------------------------------------------------------------------------- missing capacity


def missing_bytes(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> tuple[int, NodeId | None]:
    """Fewest bytes to add to one usable volunteer so the pool can hold ``model``.

    Returns ``(bytes, volunteer)``: ``(0, None)`` when the pool can already hold the
    model, ``(model size, None)`` when no volunteer is usable. Otherwise the volunteer
    is the one needing the least (ties to the smaller id); one byte less added to any
    single usable volunteer leaves the model unplaceable.
    """
    _check_model(model)
    usable = _usable(volunteers)
    pool = _build_pool(model, usable)
    if _feasible(pool, pool.mem_cap):
        return 0, None
    ell = model.num_layers
    per_layer, extra_bytes = _memory_terms(model)
    whole = model.stage_bytes(LayerRange(0, ell, ell))
    if not usable:
        return whole, None
    caps = pool.mem_cap
    middle, first, last = _end_gains(caps)
    total_middle = int(middle.sum())
    limits = _role_limits(ell)
    best: tuple[int, NodeId | None] = (whole, None)
    for v, profile in enumerate(usable):
        others = total_middle - int(middle[v])
        # (role of v, layers the rest of the pool can hold around it)
        options = [(_ONLY, 0)]
        if limits[_FIRST] > 0:
            ends = [int(last[i]) for i in _top(last, 2) if i != v]
            if ends:
                options.append((_FIRST, others + ends[0]))
            starts = [int(first[i]) for i in _top(first, 2) if i != v]
            if starts:
                options.append((_LAST, others + starts[0]))
        if limits[_MIDDLE] > 0:
            pair = _best_pair(first, last, exclude=(v,))
            if pair > _NONE:
                options.append((_MIDDLE, others + pair))
        for role, rest in options:
            layers = ell if role == _ONLY else max(1, ell - rest)
            if layers > limits[role]:
                continue
            need = layers * per_layer + extra_bytes[role] - profile.memory_bytes
            if need < best[0]:
                best = (need, profile.node_id)
    return best


def _gib(n: int) -> str:
    value = n / GIB
    return f"{value:.2f}" if value >= 0.01 or n == 0 else f"{value:.2g}"


def insufficient_capacity(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> InsufficientCapacity:
    """The error saying how much memory the pool lacks for ``model`` (see :func:`missing_bytes`)."""
    missing, node = missing_bytes(model, volunteers)
    usable = _usable(volunteers)
    have = sum(v.memory_bytes for v in usable)
    ell = model.num_layers
    need = model.stage_bytes(LayerRange(0, ell, ell))
    message = (
        f"the pool needs {_gib(missing)} more GiB (has {_gib(have)} GiB usable of {_gib(need)} GiB needed)"
        f" to hold {model.name}"
    )
    if node is None:
        hint = f"invite volunteers with at least {_gib(missing)} GiB free, each with a measured speed"
    else:
        hint = (
            f"raise volunteer {node}'s memory cap by {_gib(missing)} GiB, or invite more volunteers"
        )
    return InsufficientCapacity(message, missing_bytes=missing, hint=hint)


# --------------------------------------------------------------------------- baselines


def _require_capacity(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> list[HardwareProfile]:
    _check_model(model)
    usable = _usable(volunteers)
    if not _feasible(pool := _build_pool(model, usable), pool.mem_cap):
        raise insufficient_capacity(model, usable)
    return usable


def _fits(model: ModelSpec, order: Sequence[HardwareProfile], counts: Sequence[int]) -> bool:
    start = 0
    for profile, count in zip(order, counts):
        if model.stage_bytes(LayerRange(start, start + count, model.num_layers)) > profile.memory_bytes:
            return False
        start += count
    return True


def uniform_plan(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> Plan:
    """Baseline: equal layer counts on the first ``min(n, layers)`` usable volunteers by id.

    Ignores speed, links and memory caps: the plan may not fit (check it with
    :func:`fits_memory`). Raises :class:`InsufficientCapacity` only when the pool
    could not hold the model under any plan.
    """
    usable = _require_capacity(model, volunteers)
    ell = model.num_layers
    order = usable[: min(len(usable), ell)]
    base, rest = divmod(ell, len(order))
    return Plan((_pipeline(model, order, [base + (i < rest) for i in range(len(order))]),))


def fits_memory(model: ModelSpec, plan_: Plan, profiles: Mapping[NodeId, HardwareProfile]) -> bool:
    """Whether every stage of ``plan_`` fits its volunteer's memory (a stage per visit)."""
    return all(
        s.node_id in profiles and model.stage_bytes(s.layers) <= profiles[s.node_id].memory_bytes
        for p in plan_.pipelines
        for s in p.stages
    )


def _proportional_counts(weights: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integer counts ``<= caps`` summing to ``total``, in proportion to ``weights``.

    Water-filling (shares above a cap go to the others), then largest remainders;
    requires ``sum(caps) >= total``.
    """
    n = len(weights)
    share = [0.0] * n
    free = [i for i in range(n) if caps[i] > 0 and weights[i] > 0]
    left = float(total)
    while free:
        scale = left / sum(weights[i] for i in free)
        capped = [i for i in free if weights[i] * scale >= caps[i]]
        if not capped:
            for i in free:
                share[i] = weights[i] * scale
            break
        for i in capped:
            share[i] = float(caps[i])
            left -= caps[i]
        free = [i for i in free if i not in capped]
    counts = [min(int(math.floor(s + 1e-9)), caps[i]) for i, s in enumerate(share)]
    short = total - sum(counts)
    order = sorted(range(n), key=lambda i: (-(share[i] - counts[i]), i))
    for i in order:
        if short <= 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            short -= 1
    return counts


def _proportional(model: ModelSpec, volunteers: Sequence[HardwareProfile], weight: str) -> Plan:
    usable = _require_capacity(model, volunteers)
    ell = model.num_layers
    per_layer, extra_bytes = _memory_terms(model)
    order = list(usable)
    while order:
        last = len(order) - 1
        roles = [
            _ONLY if i == 0 and i == last else _FIRST if i == 0 else _LAST if i == last else _MIDDLE
            for i in range(len(order))
        ]
        caps = [
            max(0, _layer_cap(v.memory_bytes, extra_bytes[r], per_layer, ell)) for v, r in zip(order, roles)
        ]
        if sum(caps) < ell:
            break
        weights = [
            1.0 / v.seconds_per_layer if weight == "speed" else float(v.memory_bytes) for v in order
        ]
        counts = _proportional_counts(weights, caps, ell)
        if all(c > 0 for c in counts) and _fits(model, order, counts):
            return Plan((_pipeline(model, order, counts),))
        order = [v for v, c in zip(order, counts) if c > 0] if any(c == 0 for c in counts) else []
    raise PoolUnavailable(
        f"the {weight}-proportional split cannot place {model.name} on this pool",
        hint="use plan(), which also chooses which volunteers take the first and last stages",
    )


def proportional_plan(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> Plan:
    """Baseline and simple fallback: layers in proportion to speed, within memory caps.

    Usable volunteers in id order; the first takes the embedding, the last the head;
    volunteers whose share rounds to no layer are left out. Every stage fits. Raises
    :class:`InsufficientCapacity` when no plan could hold the model, and
    :class:`PoolUnavailable` when this fixed order cannot (:func:`plan` may still).
    """
    return _proportional(model, volunteers, "speed")


def memory_proportional_plan(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> Plan:
    """Baseline: layers in proportion to each volunteer's memory, within memory caps.

    Same shape and errors as :func:`proportional_plan`, weighted by ``memory_bytes``.
    """
    return _proportional(model, volunteers, "memory")


def greedy_binpack_plan(model: ModelSpec, volunteers: Sequence[HardwareProfile]) -> Plan:
    """Baseline: each layer in turn to the volunteer with the most speed-weighted free memory.

    Layer ``j`` goes to the volunteer maximising ``free_bytes / seconds_per_layer``
    among those it still fits (layer 0 also needs the embedding, the last layer the
    head). Layers are not kept contiguous, so the result is *not* a valid serving plan:
    every run of consecutive layers on one volunteer becomes a stage (one hop each),
    and a volunteer may appear in several stages. Its cost is computed honestly: a
    volunteer serves all its runs for every token, so each of its stages is charged
    the volunteer's total per-token time (the sum of :func:`stage_time_s` over its
    runs), which makes ``Plan.bottleneck_s`` the busiest volunteer's time. Hops are
    ``len(stages) - 1``.
    """
    usable = _require_capacity(model, volunteers)
    ell = model.num_layers
    per_layer, extra_bytes = _memory_terms(model)
    free = [v.memory_bytes for v in usable]
    owner: list[int] = []
    for j in range(ell):
        need = per_layer + (extra_bytes[_FIRST] if j == 0 else 0)
        need += extra_bytes[_LAST] if j == ell - 1 else 0
        fitting = [i for i in range(len(usable)) if free[i] >= need]
        if not fitting:
            raise PoolUnavailable(
                f"greedy bin-packing ran out of room at layer {j} of {model.name}",
                hint="use plan(), which places contiguous ranges exactly",
            )
        i = max(fitting, key=lambda i: (free[i] / usable[i].seconds_per_layer, -i))
        free[i] -= need
        owner.append(i)
    runs: list[tuple[int, LayerRange]] = []
    start = 0
    for j in range(1, ell + 1):
        if j == ell or owner[j] != owner[start]:
            runs.append((owner[start], LayerRange(start, j, ell)))
            start = j
    busy = [0.0] * len(usable)
    for i, layers in runs:
        busy[i] += stage_time_s(model, layers, usable[i])
    return Plan(
        (Pipeline(tuple(StageAssignment(usable[i].node_id, layers, busy[i]) for i, layers in runs)),)
    )
