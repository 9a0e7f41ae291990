"""The telemetry fold: utilisation, step time, tokens from last stages, and lost stages."""

from __future__ import annotations

import pytest

from server.web.telemetry import LinkSample, Observation, Telemetry, advance


def obs(now: float, *links: LinkSample) -> Observation:
    return Observation(now=now, wall=1000.0 + now, links=links)


def link(node: str, steps: int, compute_s: float, *, last: bool = False, in_pipeline: bool = True, **kw) -> LinkSample:  # noqa: ANN003
    return LinkSample(node, steps, compute_s, in_pipeline=in_pipeline, is_last_stage=last, **kw)


def test_first_observation_only_records_counters() -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 10, 1.0, last=True)))
    assert state.tokens_total == 0 and state.history == ()
    assert state.nodes["a"].utilisation == 0.0 and state.nodes["a"].step_s is None
    assert state.tokens_per_s == 0.0


def test_utilisation_step_time_and_tokens() -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 0, 0.0), link("b", 0, 0.0, last=True)))
    state = advance(state, obs(0.5, link("a", 10, 0.25), link("b", 10, 0.1, last=True)))
    a, b = state.nodes["a"], state.nodes["b"]
    assert a.utilisation == pytest.approx(0.5 * 0.5)  # smoothed from 0 toward 0.25 / 0.5 s
    assert a.step_s == pytest.approx(0.025) and b.step_s == pytest.approx(0.01)
    assert state.tokens_total == 10  # only the last stage's steps are tokens
    assert state.history == ((1000.5, 20.0),)
    state = advance(state, obs(1.0, link("a", 20, 0.75), link("b", 20, 0.2, last=True)))
    assert state.nodes["a"].utilisation == pytest.approx(0.5 * 0.25 + 0.5 * 1.0)  # 0.5 s of compute in 0.5 s, capped at 1
    assert state.nodes["a"].step_s == pytest.approx(0.5 * 0.025 + 0.5 * 0.05)
    assert state.tokens_total == 20
    assert state.tokens_per_s == pytest.approx(20.0)


def test_the_rate_averages_over_a_short_window() -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 2, 0.0, last=True)))
    for i, total in enumerate([2, 4, 4, 6, 6, 6], start=1):  # bursty: 0, 2, 0, 2, 0, 0 tokens per half second
        state = advance(state, obs(0.5 * i, link("a", total, 0.0, last=True)))
    rates = [rate for _, rate in state.history]
    assert rates == pytest.approx([0.0, 2.0, 2 / 1.5, 2.0, 2.0, 1.0])  # over at most the last four intervals
    assert state.tokens_per_s == pytest.approx(1.0)


def test_idle_intervals_keep_the_last_step_time_and_decay_utilisation() -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 0, 0.0)))
    state = advance(state, obs(1.0, link("a", 4, 0.4)))
    busy = state.nodes["a"].utilisation
    for t in (2.0, 3.0, 4.0):
        state = advance(state, obs(t, link("a", 4, 0.4)))
    assert state.nodes["a"].step_s == pytest.approx(0.1)
    assert state.nodes["a"].utilisation == pytest.approx(busy / 8)


def test_a_stage_lost_while_in_a_pipeline_is_a_failure_once() -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 0, 0.0), link("b", 0, 0.0, last=True)))
    state = advance(state, obs(0.5, link("a", 1, 0.0), link("b", 1, 0.0, last=True, alive=False)))
    assert state.stage_failures == 1 and "b" not in state.nodes
    state = advance(state, obs(1.0, link("a", 1, 0.0), link("b", 1, 0.0, last=True, alive=False)))
    assert state.stage_failures == 1


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (dict(in_pipeline=False), dict(alive=False)),  # an idle volunteer leaving is no failure
        (dict(), dict(alive=False, draining=True)),  # nor is one that drained first
    ],
)
def test_leaving_without_failing(before: dict, after: dict) -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 0, 0.0, **before)))
    state = advance(state, obs(0.5, link("a", 0, 0.0, **after)))
    assert state.stage_failures == 0 and state.nodes == {}


def test_counters_never_go_backwards_and_history_is_bounded() -> None:
    state = advance(Telemetry(), obs(0.0, link("a", 5, 1.0, last=True)))
    state = advance(state, obs(0.5, link("a", 2, 0.5, last=True)))  # a reconnect resets the link's totals
    assert state.tokens_total == 0 and state.history[-1][1] == 0.0
    for i in range(1, 20):
        state = advance(state, obs(0.5 + i, link("a", 2 + i, 0.5, last=True)), history_points=5)
    assert len(state.history) == 5 and state.tokens_total == 19
