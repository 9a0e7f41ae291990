"""Repairing a broken pipeline: survivors keep their stages, only lost layers move."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from core.types import HardwareProfile, LayerRange, ModelSpec, NodeId, Pipeline, StageAssignment
from server.planner import stage_time_s
from server.repair import merged, repair_plan


def model(layers: int = 12, **kw: int) -> ModelSpec:
    sizes = dict(layer_bytes=10, embed_bytes=0, head_bytes=0, kv_bytes_per_token_layer=0, activation_bytes=0)
    sizes.update(kw)
    return ModelSpec("tiny", layers, context_tokens=1, concurrency=1, **sizes)


def node(name: str, seconds: float = 1.0, memory: int = 1000) -> HardwareProfile:
    return HardwareProfile(node_id=NodeId(name), memory_bytes=memory, seconds_per_layer=seconds)


def pipeline(total: int, *spans: tuple[str, int, int]) -> Pipeline:
    return Pipeline(tuple(StageAssignment(NodeId(n), LayerRange(a, b, total)) for n, a, b in spans))


def spans(p: Pipeline) -> list[tuple[str, int, int]]:
    return [(s.node_id, s.layers.start, s.layers.end) for s in p.stages]


def test_an_idle_volunteer_takes_the_whole_gap_when_the_neighbours_have_no_room() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    profiles = {"a": node("a", memory=40), "c": node("c", memory=40), "d": node("d")}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), profiles, idle=[NodeId("d")])
    assert repaired is not None
    assert spans(repaired) == [("a", 0, 4), ("d", 4, 8), ("c", 8, 12)]


def test_the_fastest_idle_volunteer_that_fits_is_chosen() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    profiles = {"a": node("a", memory=40), "c": node("c", memory=40), "small": node("small", 0.1, memory=30),
                "fast": node("fast", 0.5), "slow": node("slow", 2.0)}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), profiles, idle=[NodeId("slow"), NodeId("small"), NodeId("fast")])
    assert repaired is not None and spans(repaired)[1] == ("fast", 4, 8)


def test_splitting_between_neighbours_wins_when_it_loads_fewer_layers_per_volunteer() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    profiles = {n: node(n) for n in "acd"}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), profiles, idle=[NodeId("d")])
    assert repaired is not None
    assert spans(repaired) == [("a", 0, 4), ("a", 4, 6), ("c", 6, 8), ("c", 8, 12)]
    one_layer = pipeline(12, ("a", 0, 4), ("b", 4, 5), ("c", 5, 12))
    repaired = repair_plan(m, one_layer, frozenset({NodeId("b")}), profiles, idle=[NodeId("d")])
    assert repaired is not None and spans(repaired)[1] == ("d", 4, 5)  # nothing to split: the idle one is free


def test_without_idle_volunteers_the_neighbours_split_the_gap_by_speed() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    profiles = {"a": node("a", 1.0), "c": node("c", 1.0)}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), profiles)
    assert repaired is not None
    assert spans(repaired) == [("a", 0, 4), ("a", 4, 6), ("c", 6, 8), ("c", 8, 12)]
    faster_left = {"a": node("a", 0.25), "c": node("c", 1.0)}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), faster_left)
    assert repaired is not None
    assert spans(repaired)[1][0] == "a" and spans(repaired)[1][2] - spans(repaired)[1][1] >= 3


def test_a_hot_spare_holding_the_lost_stage_wins_because_it_loads_nothing() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    profiles = {n: node(n) for n in "acde"}
    ready = {NodeId("d"): [LayerRange(0, 4, 12)], NodeId("e"): [LayerRange(4, 8, 12)]}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), profiles, idle=[NodeId("d"), NodeId("e")], ready=ready)
    assert repaired is not None and spans(repaired) == [("a", 0, 4), ("e", 4, 8), ("c", 8, 12)]
    first_lost = repair_plan(m, broken, frozenset({NodeId("a")}), {**profiles, "b": node("b")}, idle=[NodeId("d"), NodeId("e")], ready=ready)
    assert first_lost is not None and spans(first_lost)[0] == ("d", 0, 4)


def test_memory_limits_the_split_and_falls_back_to_one_survivor() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    # a holds 4 layers already (40 bytes) and has room for one more; c for nothing.
    tight = {"a": node("a", memory=50), "c": node("c", memory=40)}
    assert repair_plan(m, broken, frozenset({NodeId("b")}), tight) is None
    roomy_left = {"a": node("a", memory=80), "c": node("c", memory=40)}
    repaired = repair_plan(m, broken, frozenset({NodeId("b")}), roomy_left)
    assert repaired is not None and spans(repaired) == [("a", 0, 4), ("a", 4, 8), ("c", 8, 12)]


def test_a_lost_first_or_last_stage_has_one_neighbour() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    profiles = {"b": node("b"), "c": node("c")}
    repaired = repair_plan(m, broken, frozenset({NodeId("a")}), profiles)
    assert repaired is not None
    assert spans(repaired)[0] == ("b", 0, 4) and spans(repaired)[1:] == [("b", 4, 8), ("c", 8, 12)]


def test_nothing_to_repair_or_nothing_left_gives_none() -> None:
    m = model()
    broken = pipeline(12, ("a", 0, 6), ("b", 6, 12))
    profiles = {"a": node("a"), "b": node("b")}
    assert repair_plan(m, broken, frozenset(), profiles) is None
    assert repair_plan(m, broken, frozenset({NodeId("a"), NodeId("b")}), profiles) is None


def test_merged_folds_a_volunteers_neighbouring_stages_for_honest_estimates() -> None:
    m = model()
    repaired = pipeline(12, ("a", 0, 4), ("a", 4, 6), ("c", 6, 8), ("c", 8, 12))
    profiles = {"a": node("a"), "c": node("c")}
    folded = merged(repaired, m, profiles)
    assert spans(folded) == [("a", 0, 6), ("c", 6, 12)]
    assert folded.bottleneck_s == stage_time_s(m, LayerRange(6, 12, 12), profiles["c"])
    gone = merged(repaired, m, {"a": node("a")})
    assert math.isinf(gone.bottleneck_s)


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 19), min_size=1, max_size=5, unique=True),
    lost_mask=st.lists(st.booleans(), min_size=6, max_size=6),
    memories=st.lists(st.integers(20, 400), min_size=8, max_size=8),
    speeds=st.lists(st.floats(0.1, 4.0), min_size=8, max_size=8),
    idle_count=st.integers(0, 2),
)
def test_a_repair_covers_every_layer_once_keeps_survivors_and_fits_memory(
    cuts: list[int], lost_mask: list[bool], memories: list[int], speeds: list[float], idle_count: int
) -> None:
    total = 20
    m = model(total)
    bounds = [0, *sorted(cuts), total]
    names = [f"n{i}" for i in range(len(bounds) - 1)]
    broken = pipeline(total, *[(names[i], bounds[i], bounds[i + 1]) for i in range(len(names))])
    lost = frozenset(NodeId(n) for n, gone in zip(names, lost_mask) if gone)
    idle = [NodeId(f"idle{i}") for i in range(idle_count)]
    everyone = [*names, *idle]
    profiles = {n: node(n, speeds[i % 8], memory=max(memories[i % 8], 10 * (bounds[i + 1] - bounds[i]) if i < len(names) else 0))
                for i, n in enumerate(everyone) if NodeId(n) not in lost}
    repaired = repair_plan(m, broken, lost, profiles, idle=idle)
    if repaired is None:
        return
    layers = [layer for s in repaired.stages for layer in range(s.layers.start, s.layers.end)]
    assert layers == list(range(total))
    survivors = [s for s in broken.stages if s.node_id not in lost]
    assert all(s in [StageAssignment(r.node_id, r.layers) for r in repaired.stages] for s in survivors)
    assert not any(s.node_id in lost for s in repaired.stages)
    for n in {s.node_id for s in repaired.stages}:
        need = sum(m.stage_bytes(s.layers) for s in repaired.stages if s.node_id == n)
        assert need <= profiles[n].memory_bytes
