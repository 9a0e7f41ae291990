"""The compute policy: reasons, priorities, unknown inputs, hysteresis, and snooze times."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from app.policy import (
    ACTIVITY_GRACE_S,
    BATTERY_CONFIRM_S,
    MIN_DWELL_S,
    Cause,
    Decision,
    decide,
    snooze_until,
)
from app.settings import Settings, WeeklySchedule
from core.errors import ConfigError

MONDAY_NOON = datetime(2024, 1, 1, 12, 0)  # 2024-01-01 is a Monday
OFFICE = Settings(schedule=WeeklySchedule.from_ranges({d: [(9 * 60, 17 * 60)] for d in range(5)}))
IDLE_1MIN = Settings(only_when_idle=True, idle_minutes=1)
NIGHTS = Settings(schedule=WeeklySchedule.from_ranges({0: [(22 * 60, 1440)], 1: [(0, 6 * 60)], 6: [(23 * 60, 1440)]}))


def once(now: datetime = MONDAY_NOON, *, idle_s: float | None = None, on_battery: bool | None = None, settings: Settings = Settings(), paused: datetime | None = None) -> Decision:
    return decide(now, idle_s=idle_s, on_battery=on_battery, settings=settings, user_paused_until=paused, previous=None)


# --- one decision, no history: what blocks and what the tray says ---


@pytest.mark.parametrize(
    ("kwargs", "compute", "cause", "reason"),
    [
        ({}, True, Cause.COMPUTING, "computing"),
        ({"paused": MONDAY_NOON.replace(hour=14, minute=30)}, False, Cause.PAUSED, "paused by you until 14:30"),
        ({"paused": datetime(2024, 1, 2, 8, 0)}, False, Cause.PAUSED, "paused by you until Tue 08:00"),
        ({"paused": datetime(2024, 1, 11, 12, 0)}, False, Cause.PAUSED, "paused by you until 2024-01-11 12:00"),
        ({"paused": MONDAY_NOON}, True, Cause.COMPUTING, "computing"),  # the pause ends at that instant
        ({"paused": MONDAY_NOON - timedelta(minutes=1)}, True, Cause.COMPUTING, "computing"),
        ({"on_battery": True}, False, Cause.BATTERY, "on battery"),
        ({"on_battery": True, "settings": Settings(pause_on_battery=False)}, True, Cause.COMPUTING, "computing"),
        ({"on_battery": None}, True, Cause.COMPUTING, "computing"),
        ({"on_battery": False}, True, Cause.COMPUTING, "computing"),
        ({"now": MONDAY_NOON.replace(hour=18), "settings": OFFICE}, False, Cause.SCHEDULE, "outside your schedule (Mon 09:00–17:00)"),
        ({"now": datetime(2024, 1, 7, 12), "settings": OFFICE}, False, Cause.SCHEDULE, "outside your schedule (Sun: no hours)"),
        ({"idle_s": 10.0, "settings": Settings(only_when_idle=True)}, False, Cause.BUSY, "waiting until idle for 5 min"),
        ({"idle_s": 299.9, "settings": Settings(only_when_idle=True)}, False, Cause.BUSY, "waiting until idle for 5 min"),
        ({"idle_s": 300.0, "settings": Settings(only_when_idle=True)}, True, Cause.COMPUTING, "computing"),
        ({"idle_s": 10.0}, True, Cause.COMPUTING, "computing"),
        ({"idle_s": None, "settings": Settings(only_when_idle=True)}, True, Cause.COMPUTING, "computing (idle time is unknown on this system)"),
        ({"idle_s": float("nan"), "settings": Settings(only_when_idle=True)}, True, Cause.COMPUTING, "computing (idle time is unknown on this system)"),
        ({"idle_s": -4.0, "settings": Settings(only_when_idle=True)}, True, Cause.COMPUTING, "computing (idle time is unknown on this system)"),
        # Priorities: pause > battery > schedule > busy.
        (
            {"now": MONDAY_NOON.replace(hour=18), "paused": MONDAY_NOON.replace(hour=19), "on_battery": True, "idle_s": 0.0, "settings": replace(OFFICE, only_when_idle=True)},
            False, Cause.PAUSED, "paused by you until 19:00",
        ),
        ({"now": MONDAY_NOON.replace(hour=18), "on_battery": True, "idle_s": 0.0, "settings": replace(OFFICE, only_when_idle=True)}, False, Cause.BATTERY, "on battery"),
        ({"now": MONDAY_NOON.replace(hour=18), "idle_s": 0.0, "settings": replace(OFFICE, only_when_idle=True)}, False, Cause.SCHEDULE, "outside your schedule (Mon 09:00–17:00)"),
    ],
)
def test_first_decision_follows_the_inputs(kwargs: dict, compute: bool, cause: Cause, reason: str) -> None:
    decision = once(**kwargs)
    assert (decision.compute, decision.cause, decision.reason) == (compute, cause, reason)
    assert decision.since == kwargs.get("now", MONDAY_NOON) and decision.pending_since is None


@pytest.mark.parametrize(
    ("now", "allowed"),
    [
        (datetime(2024, 1, 1, 21, 59, 59), False),
        (datetime(2024, 1, 1, 22, 0), True),
        (datetime(2024, 1, 1, 23, 59, 59), True),
        (datetime(2024, 1, 2, 0, 0), True),  # across midnight into Tuesday's window
        (datetime(2024, 1, 2, 5, 59, 59), True),
        (datetime(2024, 1, 2, 6, 0), False),  # end-exclusive
        (datetime(2024, 1, 7, 23, 30), True),  # Sunday late
        (datetime(2024, 1, 8, 0, 0), False),  # Monday has no window before 22:00
    ],
)
def test_schedule_edges_midnight_and_end_exclusive(now: datetime, allowed: bool) -> None:
    decision = once(now, settings=NIGHTS)
    assert decision.compute is allowed
    assert decision.cause is (Cause.COMPUTING if allowed else Cause.SCHEDULE)


# --- hysteresis over simulated time ---


@dataclass(frozen=True)
class Tick:
    t: float
    decision: Decision


def simulate(
    seconds: Sequence[float],
    *,
    settings: Settings = Settings(),
    idle: Callable[[float], float | None] = lambda t: None,
    battery: Callable[[float], bool | None] = lambda t: None,
    paused: Callable[[float], datetime | None] = lambda t: None,
    start: datetime = MONDAY_NOON,
    clock: Callable[[float], float] = lambda t: t,
) -> list[Tick]:
    ticks: list[Tick] = []
    previous = None
    for t in seconds:
        now = start + timedelta(seconds=clock(t))
        previous = decide(now, idle_s=idle(t), on_battery=battery(t), settings=settings, user_paused_until=paused(t), previous=previous)
        ticks.append(Tick(t, previous))
    return ticks


def switches(ticks: Sequence[Tick]) -> list[tuple[float, bool]]:
    return [(b.t, b.decision.compute) for a, b in zip(ticks, ticks[1:]) if a.decision.compute != b.decision.compute]


def seconds(end: float, step: float = 1.0) -> list[float]:
    return [i * step for i in range(int(end / step) + 1)]


def test_a_loose_charger_does_not_flap() -> None:
    ticks = simulate(seconds(600), battery=lambda t: (t // 10) % 2 == 1)
    assert switches(ticks) == []
    assert all(tick.decision.compute for tick in ticks)


def test_a_charger_toggling_every_second_does_not_flap() -> None:
    assert switches(simulate(seconds(600), battery=lambda t: int(t) % 2 == 1)) == []


def test_unplugging_stops_after_the_battery_confirmation_and_replugging_resumes() -> None:
    ticks = simulate(seconds(400), battery=lambda t: 100 <= t < 200)
    assert switches(ticks) == [(100 + BATTERY_CONFIRM_S, False), (200 + BATTERY_CONFIRM_S, True)]
    held = next(tick.decision for tick in ticks if tick.t == 110)
    assert held.compute and held.reason == "computing, stopping soon: on battery" and held.pending_since == MONDAY_NOON + timedelta(seconds=100)
    resuming = next(tick.decision for tick in ticks if tick.t == 210)
    assert not resuming.compute and resuming.reason == "resuming soon" and resuming.cause is Cause.BATTERY


def test_a_short_unplug_changes_nothing() -> None:
    assert switches(simulate(seconds(300), battery=lambda t: 100 <= t < 100 + BATTERY_CONFIRM_S - 1)) == []


def test_a_bump_of_the_mouse_does_not_stop_idle_compute() -> None:
    ticks = simulate(seconds(400), settings=IDLE_1MIN, idle=lambda t: t + 1000 if t < 100 else t - 100)
    assert switches(ticks) == []
    assert next(tick.decision for tick in ticks if tick.t == 130).pending_since is not None
    assert ticks[-1].decision.pending_since is None  # idle again: the wish to stop is gone


def test_a_returning_user_stops_compute_after_the_activity_grace() -> None:
    ticks = simulate(seconds(400), settings=IDLE_1MIN, idle=lambda t: t + 1000 if t < 100 else 0.0 if t < 200 else t - 200)
    # Resuming needs the full idle time again after the user leaves at 200.
    assert switches(ticks) == [(100 + ACTIVITY_GRACE_S, False), (200 + 60, True)]
    assert next(tick.decision for tick in ticks if tick.t == 150).reason == "waiting until idle for 1 min"


def test_two_inputs_the_grace_apart_count_as_activity() -> None:
    def idle(t: float) -> float:
        last_input = max((i for i in (100.0, 130.0) if i <= t), default=-1000.0)
        return t - last_input

    assert switches(simulate(seconds(300), settings=IDLE_1MIN, idle=idle)) == [(130, False), (190, True)]


def test_a_user_back_right_after_compute_started_waits_out_the_dwell() -> None:
    ticks = simulate(seconds(200), settings=IDLE_1MIN, idle=lambda t: t if t < 65 else 0.0)
    assert switches(ticks) == [(60, True), (60 + MIN_DWELL_S, False)]


def test_a_pause_acts_at_once_even_within_the_dwell_and_its_end_resumes_at_once() -> None:
    end = MONDAY_NOON + timedelta(seconds=40)
    ticks = simulate(seconds(100), paused=lambda t: end if t >= 10 else None)
    assert switches(ticks) == [(10, False), (40, True)]
    assert next(tick.decision for tick in ticks if tick.t == 20).reason == "paused by you until 12:00"


def test_lifting_a_pause_resumes_at_once() -> None:
    ticks = simulate(seconds(100), paused=lambda t: MONDAY_NOON + timedelta(hours=1) if 50 <= t < 55 else None)
    assert switches(ticks) == [(50, False), (55, True)]


def test_a_pause_ending_into_a_battery_stop_stays_stopped() -> None:
    ticks = simulate(seconds(100), paused=lambda t: MONDAY_NOON + timedelta(seconds=40) if t >= 10 else None, battery=lambda t: True if t >= 20 else False)
    assert switches(ticks) == [(10, False)]
    assert ticks[-1].decision.cause is Cause.BATTERY


@pytest.mark.parametrize(("start", "switch_at"), [(datetime(2024, 1, 1, 16, 59), datetime(2024, 1, 1, 17, 0)), (datetime(2024, 1, 1, 16, 59, 50), datetime(2024, 1, 1, 17, 0, 20))])
def test_a_schedule_boundary_stops_at_once_after_the_dwell(start: datetime, switch_at: datetime) -> None:
    ticks = simulate(seconds(120), settings=OFFICE, start=start)
    assert [(start + timedelta(seconds=t), compute) for t, compute in switches(ticks)] == [(switch_at, False)]


def test_a_clock_going_backwards_delays_but_never_blocks_a_switch() -> None:
    ticks = simulate(seconds(400), battery=lambda t: t > 100, clock=lambda t: t if t <= 100 else t - 3600)
    assert switches(ticks) == [(101 + BATTERY_CONFIRM_S, False)]
    assert all(tick.decision.since <= MONDAY_NOON + timedelta(seconds=tick.t if tick.t <= 100 else tick.t - 3600) for tick in ticks)


# --- properties over any input sequence ---

SHORT_WINDOWS = WeeklySchedule.from_ranges({0: [(m, m + 3) for m in range(12 * 60, 15 * 60, 5)]})
FLIPPING_SETTINGS = [
    Settings(),
    Settings(pause_on_battery=False),
    Settings(only_when_idle=True, idle_minutes=1),
    Settings(schedule=SHORT_WINDOWS),
    Settings(only_when_idle=True, idle_minutes=2, schedule=SHORT_WINDOWS),
]
# Whole-day schedules only: the raw target cannot change while the inputs hold still.
STEADY_SETTINGS = [
    Settings(),
    Settings(only_when_idle=True, idle_minutes=1),
    Settings(only_when_idle=True, schedule=WeeklySchedule.from_ranges({0: [(0, 1440)]})),
    Settings(schedule=WeeklySchedule.from_ranges({1: [(0, 1440)]})),
]

idle_values = st.none() | st.floats(0, 400) | st.sampled_from([float("nan"), -1.0, float("inf")])
pause_commands = st.none() | st.just("clear") | st.floats(-60, 600)


@dataclass(frozen=True)
class Step:
    dt: float
    idle: float | None
    battery: bool | None
    pause: None | str | float
    settings: int


def steps(n_settings: int, *, pauses: bool) -> st.SearchStrategy[list[Step]]:
    step = st.builds(
        Step,
        dt=st.floats(0.25, 90),
        idle=idle_values,
        battery=st.sampled_from([None, False, True]),
        pause=pause_commands if pauses else st.none(),
        settings=st.integers(0, n_settings - 1),
    )
    return st.lists(step, min_size=1, max_size=50)


def run_steps(sequence: Sequence[Step], variants: Sequence[Settings]) -> list[tuple[datetime, Decision]]:
    now, paused, previous = MONDAY_NOON, None, None
    out = []
    for s in sequence:
        now += timedelta(seconds=s.dt)
        if s.pause == "clear":
            paused = None
        elif isinstance(s.pause, float):
            paused = now + timedelta(seconds=s.pause)
        previous = decide(now, idle_s=s.idle, on_battery=s.battery, settings=variants[s.settings], user_paused_until=paused, previous=previous)
        out.append((now, previous))
    return out


def check_dwell(history: Sequence[tuple[datetime, Decision]]) -> None:
    last_switch = history[0][0]
    for (_, before), (now, after) in zip(history, history[1:]):
        assert after.compute == (after.cause is Cause.COMPUTING)
        if after.compute != before.compute:
            by_user = Cause.PAUSED in (before.cause, after.cause)
            assert by_user or (now - last_switch).total_seconds() >= MIN_DWELL_S, f"automatic switch {(now - last_switch).total_seconds()} s after the last"
            last_switch = now
        assert after.since == last_switch


@hyp_settings(max_examples=150, deadline=None)
@given(steps(len(FLIPPING_SETTINGS), pauses=False))
def test_without_pauses_no_two_switches_come_within_the_dwell(sequence: list[Step]) -> None:
    check_dwell(run_steps(sequence, FLIPPING_SETTINGS))


@hyp_settings(max_examples=150, deadline=None)
@given(steps(len(FLIPPING_SETTINGS), pauses=True))
def test_every_automatic_switch_keeps_the_dwell_after_the_last_switch(sequence: list[Step]) -> None:
    check_dwell(run_steps(sequence, FLIPPING_SETTINGS))


@hyp_settings(max_examples=100, deadline=None)
@given(steps(len(STEADY_SETTINGS), pauses=True))
def test_once_the_inputs_hold_still_the_decision_follows_them(sequence: list[Step]) -> None:
    history = run_steps(sequence, STEADY_SETTINGS)
    last = sequence[-1]
    now, decision = history[-1]
    pause_end = None
    for s, (at, _) in zip(sequence, history):
        if s.pause == "clear":
            pause_end = None
        elif isinstance(s.pause, float):
            pause_end = at + timedelta(seconds=s.pause)
    idle = last.idle if last.idle is not None and 0 <= last.idle < float("inf") else 0.0
    hold = MIN_DWELL_S + BATTERY_CONFIRM_S + ACTIVITY_GRACE_S + idle + 2
    for _ in range(int(hold) + 1):
        now += timedelta(seconds=1)
        decision = decide(now, idle_s=last.idle, on_battery=last.battery, settings=STEADY_SETTINGS[last.settings], user_paused_until=pause_end, previous=decision)
    target = decide(now, idle_s=last.idle, on_battery=last.battery, settings=STEADY_SETTINGS[last.settings], user_paused_until=pause_end, previous=None)
    assert (decision.compute, decision.cause) == (target.compute, target.cause)


# --- snooze ---


@pytest.mark.parametrize(
    ("now", "choice", "until"),
    [
        (datetime(2024, 1, 1, 14, 0), "30m", datetime(2024, 1, 1, 14, 30)),
        (datetime(2024, 1, 1, 23, 45), "30m", datetime(2024, 1, 2, 0, 15)),
        (datetime(2024, 1, 1, 14, 0), "1h", datetime(2024, 1, 1, 15, 0)),
        (datetime(2024, 1, 1, 14, 0), "tomorrow", datetime(2024, 1, 2, 8, 0)),
        (datetime(2024, 1, 1, 0, 10), "tomorrow", datetime(2024, 1, 2, 8, 0)),
        (datetime(2024, 12, 31, 23, 59), "tomorrow", datetime(2025, 1, 1, 8, 0)),
    ],
)
def test_snooze_until(now: datetime, choice: str, until: datetime) -> None:
    assert snooze_until(now, choice) == until  # type: ignore[arg-type]


def test_snooze_until_tomorrow_keeps_local_wall_time_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    until = snooze_until(datetime(2024, 3, 30, 20, 0, tzinfo=berlin), "tomorrow")  # clocks go forward that night
    assert (until.hour, until.minute, until.day, until.utcoffset()) == (8, 0, 31, timedelta(hours=2))


def test_a_snooze_pauses_with_a_readable_reason() -> None:
    now = datetime(2024, 1, 1, 14, 0)
    assert once(now, paused=snooze_until(now, "30m")).reason == "paused by you until 14:30"
    assert once(now, paused=snooze_until(now, "tomorrow")).reason == "paused by you until Tue 08:00"


def test_an_unknown_snooze_choice_raises() -> None:
    with pytest.raises(ConfigError, match="snooze") as err:
        snooze_until(MONDAY_NOON, "2h")  # type: ignore[arg-type]
    assert "30m" in (err.value.hint or "")
