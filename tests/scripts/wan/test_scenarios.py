"""The WAN scenario table and the lower bound a measurement is compared with."""

from __future__ import annotations

import pytest

from scripts.wan.scenarios import SCENARIOS, Scenario, efficiency, legs_per_token, lower_bound_step_s


def test_the_table_starts_with_a_baseline_that_adds_nothing() -> None:
    first = SCENARIOS[0]
    assert (first.rtt_ms, first.loss, first.rate_mbit) == (0.0, 0.0, None)
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    assert any(s.loss > 0 for s in SCENARIOS) and any(s.rtt_ms == 20.0 and s.rate_mbit == 100.0 for s in SCENARIOS)


def test_relayed_stages_each_cost_a_round_trip_and_direct_links_share_them() -> None:
    assert legs_per_token(3, "relay") == 3.0
    assert legs_per_token(3, "direct") == 2.0  # coordinator -> v1 -> v2 -> v3 -> coordinator: 4 one-way legs
    assert legs_per_token(1, "direct") == legs_per_token(1, "relay") == 1.0
    with pytest.raises(ValueError):
        legs_per_token(0, "relay")
    with pytest.raises(ValueError):
        legs_per_token(2, "carrier pigeon")


def test_lower_bound_adds_round_trips_and_optionally_the_bytes_at_the_rate() -> None:
    wan = Scenario("w", rtt_ms=20.0, rate_mbit=100.0)
    assert lower_bound_step_s(0.060, 3, wan) == pytest.approx(0.120)
    # 125 kB at 100 Mbit/s take 10 ms
    assert lower_bound_step_s(0.060, 3, wan, wire_bytes_per_token=125_000) == pytest.approx(0.130)
    assert lower_bound_step_s(0.060, 3, Scenario("lan"), wire_bytes_per_token=125_000) == pytest.approx(0.060)
    assert efficiency(4.0, 0.125) == 0.5


def test_invalid_scenarios_are_refused() -> None:
    for bad in (dict(links="mesh"), dict(rtt_ms=-1.0), dict(loss=1.0), dict(rate_mbit=0.0)):
        with pytest.raises(ValueError):
            Scenario("x", **bad)  # type: ignore[arg-type]
