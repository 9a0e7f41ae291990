"""The arithmetic of `butterfly bench`, checked with hand-made numbers."""

from __future__ import annotations

import math
import random

import pytest

from cli.bench_report import (
    Run,
    breakdown,
    breakdown_direct,
    bytes_per_token,
    compare_runs,
    compare_with_peer,
    concurrency_point,
    fit_hop_overhead,
    hops,
    per_hop_vs_reference_ms,
    plot_specs,
    prefill_point,
    ratio,
    summarize,
    table,
    wire_per_stage,
)
from core.errors import ConfigError


def test_summarize_gives_order_statistics_and_spread() -> None:
    s = summarize([10.0, 12.0, 11.0, 20.0])
    assert (s.median, s.minimum, s.maximum, s.n) == (11.5, 10.0, 20.0, 4)
    assert s.mean == pytest.approx(13.25)
    assert s.spread == pytest.approx(10.0 / 11.5)
    assert summarize([3.0]).stdev == 0.0 and summarize([3.0]).spread == 0.0
    assert s.as_dict()["spread"] == pytest.approx(s.spread)


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf]])
def test_summarize_refuses_empty_or_non_finite(values: list[float]) -> None:
    with pytest.raises(ConfigError):
        summarize(values)


def test_ratio_and_hops() -> None:
    assert ratio(30.0, 20.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(1.0, math.inf))
    assert hops(3) == 6
    assert hops(3, direct=True) == 4 and hops(1, direct=True) == 2  # coordinator → stages in a row → coordinator


def test_per_hop_overhead_against_the_reference_charges_the_difference_to_the_hops() -> None:
    # 12 ms vs 10 ms over 2 stages (4 hops): 0.5 ms per hop; a leaner runtime gives a negative figure.
    assert per_hop_vs_reference_ms(0.012, 0.010, 2) == pytest.approx(0.5)
    assert per_hop_vs_reference_ms(0.009, 0.010, 1) < 0
    assert per_hop_vs_reference_ms(0.012, 0.010, 2, direct=True) == pytest.approx(2.0 / 3)
    with pytest.raises(ConfigError):
        per_hop_vs_reference_ms(0.01, 0.01, 0)


def test_fit_recovers_a_known_per_stage_cost_from_noisy_points() -> None:
    rng = random.Random(3)
    points = [(s, 0.050 + 0.0012 * s + rng.uniform(-1e-5, 1e-5)) for s in (1, 2, 3, 4) for _ in range(3)]
    fit = fit_hop_overhead(points)
    assert fit.per_stage_ms == pytest.approx(1.2, abs=0.02)
    assert fit.per_hop_ms == pytest.approx(0.6, abs=0.01)
    assert fit.intercept_ms == pytest.approx(50.0, abs=0.05)
    assert fit.as_dict()["points"][0] == {"stages": 1, "step_ms": pytest.approx(points[0][1] * 1000)}


def test_fit_with_direct_links_charges_one_hop_per_stage() -> None:
    fit = fit_hop_overhead([(1, 0.050), (2, 0.051), (3, 0.052)], hops_per_stage=1)
    assert fit.per_stage_ms == pytest.approx(1.0) and fit.per_hop_ms == pytest.approx(1.0)
    assert fit.as_dict()["hops_per_stage"] == 1
    assert fit_hop_overhead([(1, 0.050), (3, 0.052)]).per_hop_ms == pytest.approx(0.5)


def test_wire_per_stage_cancels_the_prefill_on_every_link() -> None:
    # stage 0: 4 kB prefill + 1 kB per token out, 3 kB + 0.5 kB back; stage 1 receives nothing.
    before = [(100, 200), (0, 0)]
    middle = [(100 + 4000 + 1000, 200 + 3000 + 500), (0, 0)]
    after = [(middle[0][0] + 4000 + 9 * 1000, middle[0][1] + 3000 + 9 * 500), (0, 0)]
    wire = wire_per_stage(before, middle, after, 9)
    assert wire["per_stage"][0] == {"stage": 0, "to_volunteer": 1000.0, "from_volunteer": 500.0}
    assert wire["per_stage"][1]["to_volunteer"] == 0.0
    assert wire["bytes_per_token"] == pytest.approx(1500.0)
    with pytest.raises(ValueError):
        wire_per_stage(before, middle[:1], after, 9)


def test_fit_needs_two_stage_counts() -> None:
    with pytest.raises(ConfigError):
        fit_hop_overhead([(2, 0.01), (2, 0.011)])


def test_bytes_per_token_cancels_the_prefill() -> None:
    # prefill 10 kB + 1 kB per token: a 1-token and a 33-token run differ by 32 kB.
    assert bytes_per_token(10_000 + 33 * 1000, 10_000 + 1000, 33, 1) == 1000.0
    with pytest.raises(ConfigError):
        bytes_per_token(1, 1, 1, 1)


def test_run_derives_step_time_and_end_to_end_speed() -> None:
    run = Run(ttft_s=0.1, decode_tokens_per_s=20.0, total_s=2.0, new_tokens=40)
    assert run.step_s == 0.05 and run.end_to_end_tokens_per_s == 20.0
    assert Run(0.1, 0.0, 0.0, 1).step_s == math.inf


def _runs(rate: float, ttft: float) -> list[Run]:
    return [Run(ttft, rate * f, 64 / (rate * f) + ttft, 64) for f in (0.9, 1.0, 1.1)]


def test_compare_runs_reports_both_sides_and_ratios() -> None:
    result = compare_runs(_runs(30.0, 0.2), _runs(20.0, 0.1), stages=2)
    assert result["decode_tokens_per_s"]["ratio"] == pytest.approx(1.5)
    assert result["ttft_s"]["ratio"] == pytest.approx(2.0)
    assert result["hops_per_token"] == 4
    assert result["per_hop_vs_reference_ms"] == pytest.approx((1 / 30 - 1 / 20) / 4 * 1000)
    assert result["links"] == "relay"
    direct = compare_runs(_runs(30.0, 0.2), _runs(20.0, 0.1), stages=2, direct=True)
    assert direct["hops_per_token"] == 3 and direct["links"] == "direct"
    assert direct["per_hop_vs_reference_ms"] == pytest.approx((1 / 30 - 1 / 20) / 3 * 1000)


def test_prefill_and_concurrency_points() -> None:
    p = prefill_point(512, [0.5, 0.4, 0.6], [1.0, 1.0])
    assert p["ours_tokens_per_s"] == pytest.approx(1024.0) and p["reference_tokens_per_s"] == pytest.approx(512.0)
    assert p["ratio"] == pytest.approx(2.0)
    c = concurrency_point(4, [16, 16, 16, 16], 2.0)
    assert c["aggregate_tokens_per_s"] == 32.0 and c["tokens"] == 64
    with pytest.raises(ConfigError):
        concurrency_point(1, [1], 0.0)


def test_breakdown_splits_each_round_trip_into_compute_and_overhead() -> None:
    step = {"total_s": 0.020, "sample_s": 0.001,
            "stages": [{"compute_s": 0.005, "round_trip_s": 0.006}, {"compute_s": 0.010, "round_trip_s": 0.0125}]}
    b = breakdown([step, step])
    assert b["steps"] == 2
    assert b["stages"][1]["overhead_ms"] == pytest.approx(2.5)
    assert b["compute_ms"] == pytest.approx(15.0)
    assert b["hop_overhead_ms"] == pytest.approx(3.5)
    assert b["coordinator_other_ms"] == pytest.approx(20.0 - 18.5 - 1.0)
    with pytest.raises(ConfigError):
        breakdown([])
    full = breakdown([step], generate_step_s=0.023)
    assert full["generate_step_ms"] == pytest.approx(23.0) and full["generate_extra_ms"] == pytest.approx(3.0)


def test_breakdown_direct_splits_the_step_at_each_arrival() -> None:
    # stage 0 computes 5 ms and its copy is back at 6 ms; stage 1 computes 10 ms after the hand-off, back at 17.5 ms.
    step = {"total_s": 0.020, "sample_s": 0.001,
            "stages": [{"compute_s": 0.005, "arrival_s": 0.006, "handed_off": True},
                       {"compute_s": 0.010, "arrival_s": 0.0175, "handed_off": False}]}
    relayed = {**step, "stages": [{**step["stages"][0], "handed_off": False}, step["stages"][1]]}
    b = breakdown_direct([step, step, relayed], generate_step_s=0.022)
    assert [s["gap_ms"] for s in b["stages"]] == pytest.approx([1.0, 1.5])
    assert b["stages"][1]["arrival_ms"] == pytest.approx(17.5)
    assert b["compute_ms"] == pytest.approx(15.0) and b["gap_ms"] == pytest.approx(2.5)
    assert b["coordinator_other_ms"] == pytest.approx(20.0 - 17.5 - 1.0)
    assert b["handed_off_share"] == pytest.approx(2 / 3)
    assert b["generate_extra_ms"] == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        breakdown_direct([])


def _report() -> dict[str, object]:
    return {
        "stages": 3,
        "decode": compare_runs(_runs(30.0, 0.2), _runs(20.0, 0.1), stages=3),
        "prefill": [prefill_point(128, [0.1], [0.2]), prefill_point(512, [0.3], [0.5])],
        "concurrency": {"points": [concurrency_point(1, [8], 1.0), concurrency_point(2, [8, 8], 1.2)]},
        "hops": {"sweep": [{"stages": 3, "ours_step_ms": 33.0, "ours_bare_step_ms": 31.0, "reference_step_ms": 50.0},
                           {"stages": 1, "ours_step_ms": 30.0, "ours_bare_step_ms": 29.0, "reference_step_ms": 50.0}]},
    }


def test_plot_specs_follow_the_report_and_skip_missing_sections() -> None:
    specs = {s.name: s for s in plot_specs(_report())}
    assert set(specs) == {"decode", "ttft", "prefill", "concurrency", "stages"}
    assert specs["decode"].series[0].values == pytest.approx((20.0, 30.0))
    assert specs["prefill"].x == (128, 512)
    assert specs["concurrency"].series[0].values == pytest.approx((8.0, 16 / 1.2))
    assert specs["stages"].x == (1, 3)  # sorted, whatever order the pools ran in
    assert [s.values for s in specs["stages"].series] == [(30.0, 33.0), (29.0, 31.0), (50.0, 50.0)]
    bare = {k: v for k, v in _report().items() if k in ("stages", "decode")}
    assert [s.name for s in plot_specs(bare)] == ["decode", "ttft"]


def _report_both_ways() -> dict[str, object]:
    report = _report()
    report["decode"] = compare_runs(_runs(30.0, 0.2), _runs(20.0, 0.1), stages=3, direct=True)
    report["decode_relay"] = compare_runs(_runs(25.0, 0.25), _runs(20.0, 0.1), stages=3)
    for point, relay_ms in zip(report["hops"]["sweep"], (36.0, 31.0)):
        point["ours_relay_step_ms"] = relay_ms
        point["ours_bare_direct_step_ms"] = relay_ms - 10.0
    return report


def test_plot_specs_show_direct_and_relay_side_by_side() -> None:
    specs = {s.name: s for s in plot_specs(_report_both_ways())}
    assert specs["decode"].x == ("transformers\n1 process", "Butterfly, direct\n3 stages", "Butterfly, relay\n3 stages")
    assert specs["decode"].series[0].values == pytest.approx((20.0, 30.0, 25.0))
    assert specs["ttft"].series[0].values == pytest.approx((100.0, 200.0, 250.0))
    stages = specs["stages"]
    assert [s.label for s in stages.series] == [
        "Butterfly, direct", "Butterfly, relay", "Butterfly, bare relayed steps", "Butterfly, bare direct steps",
        "transformers (1 process)"]
    assert stages.series[1].values == (31.0, 36.0) and stages.series[3].values == (21.0, 26.0)


def test_table_with_relay_has_both_ways_and_their_ratios() -> None:
    text = table(_report_both_ways())
    assert "| Butterfly, 3 stages, direct | ratio | Butterfly, 3 stages, relay | ratio |" in text
    assert "| decode tokens/s | 20.0 | 30.0 | 1.50× | 25.0 | 1.25× |" in text
    assert "| time to first token (ms) | 100 | 200 | 2.00× | 250 | 2.50× |" in text
    assert "| prefill tokens/s, 128-token prompt | 640 | 1280 | 2.00× | – | – |" in text


def test_table_has_a_row_per_figure() -> None:
    text = table(_report())
    assert "Butterfly, 3 stages" in text
    assert "| decode tokens/s | 20.0 | 30.0 | 1.50× |" in text
    assert "128-token prompt" in text and "512-token prompt" in text


def test_compare_with_peer_uses_the_same_decode_definition_for_everyone() -> None:
    ours = [{"decode": compare_runs(_runs(90.0, 0.02), _runs(80.0, 0.02), stages=2)}]
    peer = [{"median_decode_step_ms_mean": 20.0, "median_first_step_ms": 40.0, "median_tok_per_s": 48.0}]
    peer_ref = [{"median_decode_step_ms_mean": 10.0, "median_first_step_ms": 16.0, "median_tok_per_s": 95.0}]
    result = compare_with_peer(ours, peer, peer_ref)
    assert result["decode_tokens_per_s"]["peer"]["median"] == pytest.approx(50.0)
    assert result["ratios"]["peer_vs_reference"] == pytest.approx(0.5)
    assert result["ratios"]["ours_vs_peer"] == pytest.approx(90.0 / 50.0)
    assert result["ratios"]["ours_vs_reference"] == pytest.approx(90.0 / 80.0)
    with pytest.raises(ConfigError):
        compare_with_peer([], peer, peer_ref)
    both = [{"decode": ours[0]["decode"], "decode_relay": compare_runs(_runs(60.0, 0.03), _runs(80.0, 0.02), stages=2)}]
    relayed = compare_with_peer(both, peer, peer_ref, section="decode_relay")
    assert relayed["ratios"]["ours_vs_peer"] == pytest.approx(60.0 / 50.0)
    assert compare_with_peer(both, peer, peer_ref)["ratios"]["ours_vs_peer"] == pytest.approx(90.0 / 50.0)
