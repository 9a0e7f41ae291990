"""The WAN scenario table and the lower bounds a measurement is compared with."""

from __future__ import annotations

import pytest

from scripts.wan.scenarios import (
    SCENARIOS,
    Scenario,
    alternating_order,
    critical_bytes_per_token,
    direct_lower_bound_step_s,
    efficiency,
    lower_bound_step_s,
    one_way_legs,
    relay_lower_bound_step_s,
)


def test_the_table_starts_with_a_baseline_that_adds_nothing() -> None:
    first = SCENARIOS[0]
    assert (first.rtt_ms, first.loss, first.rate_mbit) == (0.0, 0.0, None)
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    assert any(s.loss > 0 for s in SCENARIOS) and any(s.rtt_ms == 20.0 and s.rate_mbit == 100.0 for s in SCENARIOS)


def test_relay_costs_two_legs_per_stage_and_direct_one_more_than_the_stages() -> None:
    assert one_way_legs(3, "relay") == 6  # c -> v1 -> c -> v2 -> c -> v3 -> c
    assert one_way_legs(3, "direct") == 4  # c -> v1 -> v2 -> v3 -> c
    assert one_way_legs(1, "direct") == one_way_legs(1, "relay") == 2
    with pytest.raises(ValueError):
        one_way_legs(0, "relay")
    with pytest.raises(ValueError):
        one_way_legs(2, "carrier pigeon")


def test_lower_bounds_add_half_a_round_trip_per_leg_and_optionally_the_bytes_at_the_rate() -> None:
    wan = Scenario("w", rtt_ms=20.0, rate_mbit=100.0)
    assert relay_lower_bound_step_s(0.060, 3, wan) == pytest.approx(0.120)  # 6 legs x 10 ms
    assert direct_lower_bound_step_s(0.060, 3, wan) == pytest.approx(0.100)  # 4 legs x 10 ms
    assert lower_bound_step_s(0.060, 3, wan, "direct") == direct_lower_bound_step_s(0.060, 3, wan)
    # 125 kB at 100 Mbit/s take 10 ms
    assert relay_lower_bound_step_s(0.060, 3, wan, wire_bytes_per_token=125_000) == pytest.approx(0.130)
    assert direct_lower_bound_step_s(0.060, 3, wan, wire_bytes_per_token=125_000) == pytest.approx(0.110)
    assert relay_lower_bound_step_s(0.060, 3, Scenario("lan"), wire_bytes_per_token=125_000) == pytest.approx(0.060)
    assert efficiency(4.0, 0.125) == 0.5


def test_direct_links_never_have_a_higher_bound_than_relay() -> None:
    for stages in range(1, 9):
        for s in SCENARIOS:
            assert direct_lower_bound_step_s(0.05, stages, s) <= relay_lower_bound_step_s(0.05, stages, s)


def test_only_the_bytes_on_the_path_count() -> None:
    sent, received = [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]
    assert critical_bytes_per_token(sent, received, "relay") == 660.0
    assert critical_bytes_per_token(sent, received, "direct") == 310.0  # token to s0, s2's answer back
    with pytest.raises(ValueError):
        critical_bytes_per_token([1.0], [1.0, 2.0], "relay")
    with pytest.raises(ValueError):
        critical_bytes_per_token([], [], "direct")
    with pytest.raises(ValueError):
        critical_bytes_per_token([1.0], [1.0], "mesh")


def test_timed_answers_alternate_which_links_go_first() -> None:
    assert alternating_order(3) == ["direct", "relay", "relay", "direct", "direct", "relay"]
    assert alternating_order(4).count("direct") == alternating_order(4).count("relay") == 4
    with pytest.raises(ValueError):
        alternating_order(0)


def test_invalid_scenarios_are_refused() -> None:
    for bad in (dict(rtt_ms=-1.0), dict(loss=1.0), dict(rate_mbit=0.0)):
        with pytest.raises(ValueError):
            Scenario("x", **bad)  # type: ignore[arg-type]
