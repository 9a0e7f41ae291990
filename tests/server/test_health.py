"""Health decisions are pure: stalls, silence and sustained speed changes, with time passed in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.health import (
    STALL_CEILING_S,
    STALL_FLOOR_S,
    SpeedWatch,
    StepTimes,
    ema,
    is_silent,
    stall_timeout_s,
)


def test_ema_starts_with_the_first_sample_and_moves_toward_new_ones() -> None:
    assert ema(None, 4.0) == 4.0
    assert 4.0 < ema(4.0, 8.0) < 8.0


def test_step_times_separate_decode_from_prefill() -> None:
    times = StepTimes()
    for _ in range(5):
        times = times.observe(compute_s=0.010, tokens=1, layers=10)
    times = times.observe(compute_s=0.200, tokens=100, layers=10)
    assert times.samples == 5
    assert times.decode_s_per_layer == pytest.approx(0.001)
    assert times.prefill_s_per_token_layer == pytest.approx(0.0002)
    assert times.expected_s(tokens=1, layers=5, fallback_s_per_layer=9.0) == pytest.approx(0.005)
    assert times.expected_s(tokens=100, layers=5, fallback_s_per_layer=9.0) == pytest.approx(0.1)


def test_expected_time_falls_back_to_the_profile() -> None:
    assert StepTimes().expected_s(tokens=1, layers=4, fallback_s_per_layer=0.002) == pytest.approx(0.008)


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_bad_samples_are_ignored(bad: float) -> None:
    assert StepTimes().observe(compute_s=bad, tokens=1, layers=1) == StepTimes()


def test_stall_timeout_is_bounded() -> None:
    assert stall_timeout_s(0.001) == STALL_FLOOR_S
    assert stall_timeout_s(1000.0) == STALL_CEILING_S
    assert stall_timeout_s(0.5) == pytest.approx(5.0)
    assert stall_timeout_s(float("nan")) == STALL_CEILING_S
    assert stall_timeout_s(0.5, rtt_s=0.25) == pytest.approx(5.5)


def test_silence() -> None:
    assert not is_silent(10.0, 15.0, timeout_s=10.0)
    assert is_silent(10.0, 20.5, timeout_s=10.0)


def test_speed_watch_triggers_once_after_a_sustained_slowdown() -> None:
    watch = SpeedWatch()
    triggers = []
    for tick in range(40):
        now = tick * 0.25
        watch, fired = watch.observe(planned_s=0.001, observed_s=0.004, now=now, window_s=2.0)
        triggers.append(fired)
    assert triggers.index(True) == 8  # 2 s after the first slow observation
    assert sum(triggers) == 4  # the watch resets after each trigger


def test_speed_watch_ignores_noise_and_brief_blips() -> None:
    watch = SpeedWatch()
    for tick in range(40):
        observed = 0.0011 if tick % 2 else 0.0009
        watch, fired = watch.observe(planned_s=0.001, observed_s=observed, now=tick * 0.25)
        assert not fired
    watch, _ = watch.observe(planned_s=0.001, observed_s=0.004, now=100.0)
    watch, fired = watch.observe(planned_s=0.001, observed_s=0.001, now=101.0)
    watch, fired = watch.observe(planned_s=0.001, observed_s=0.004, now=103.0)
    assert not fired  # the slowdown restarted at 103 s


@given(
    st.lists(st.tuples(st.floats(0.0001, 0.1), st.floats(0.0, 0.5)), min_size=1, max_size=60),
)
def test_speed_watch_never_fires_before_a_full_window(samples: list[tuple[float, float]]) -> None:
    watch, now, since = SpeedWatch(), 0.0, None
    for observed, step in samples:
        now += step
        ratio = observed / 0.001
        deviating = ratio >= 1.25 or ratio <= 0.8
        watch, fired = watch.observe(planned_s=0.001, observed_s=observed, now=now, window_s=2.0)
        if fired:
            assert since is not None and now - since >= 2.0 - 1e-9
            since = None
        elif deviating:
            since = watch.since
        else:
            since = None
        assert math.isfinite(now)
