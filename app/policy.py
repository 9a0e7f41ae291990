"""Whether the volunteer computes right now: one pure function, :func:`decide`.

The agent's loop calls ``decide`` every few seconds with the clock, the platform's idle
time and battery state, the settings, the user's pause and the previous decision; the
tray shows the returned :class:`Decision`'s ``reason``. Nothing here reads a clock or
the system.

What blocks compute, highest priority first (the first one is the reason shown):

1. **paused** — the user paused until ``user_paused_until`` (``now`` before it);
2. **battery** — ``pause_on_battery`` and the machine is known to run on battery;
3. **schedule** — the weekly schedule has windows and ``now`` lies in none of them;
4. **busy** — ``only_when_idle`` and the user is known to have used the machine within
   the last ``idle_minutes``.

Unknown inputs never block: ``idle_s=None`` (or a negative or non-finite value) means
"only when idle" cannot be honoured and is ignored (the reason says so);
``on_battery=None`` counts as on mains power. A setting can stop compute only when the
value it needs is known.

Hysteresis, so the decision does not flap (the constants below carry the numbers):

- The first decision (``previous=None``) follows the inputs at once.
- The user's own actions act at once: a pause stops compute immediately, and the
  decision right after a pause (expired or lifted) follows the inputs immediately.
- Every other switch of ``compute`` is *automatic* and needs both:
  a) at least ``MIN_DWELL_S`` since the last switch (``previous.since``), and
  b) the switch wanted without interruption (``pending_since``) long enough for the
     condition that wants it:
     - stop for battery, or start after a battery stop: ``BATTERY_CONFIRM_S``;
     - stop or start at a schedule boundary: ``SCHEDULE_CONFIRM_S``;
     - start after a busy stop: none beyond the idle time itself (the user has already
       been away ``idle_minutes``, which is the confirmation);
     - stop because the user came back: the user must be *active* for
       ``ACTIVITY_GRACE_S``, i.e. input at least that long after the switch was first
       wanted. A single bump of the mouse does not stop compute; two inputs that far
       apart do.
  A stop with several blocking conditions happens when any one of them is confirmed.
- Hence any two consecutive automatic switches are at least ``MIN_DWELL_S`` apart, and
  once the inputs hold still (for "busy": the user keeps using the machine), the
  decision follows them within ``MIN_DWELL_S + max(BATTERY_CONFIRM_S, ACTIVITY_GRACE_S)``
  plus one call interval.

``since`` is when ``compute`` last changed. A clock that went backwards (a naive local
clock at the end of daylight saving time) re-anchors ``since`` and ``pending_since`` to
``now``, so it delays switches by at most one dwell and never blocks them. All
datetimes given must be alike (all naive local time, or all aware); the schedule reads
``now``'s wall clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Final, Literal, get_args

from core.errors import ConfigError

from app.settings import Settings

MIN_DWELL_S: Final = 30.0
"""Seconds: the least time between two automatic switches of ``compute``."""

BATTERY_CONFIRM_S: Final = 30.0
"""Seconds: a change of battery state must hold this long before it starts or stops compute."""

SCHEDULE_CONFIRM_S: Final = 0.0
"""Seconds: schedule boundaries follow the clock, which does not flap; acted on at once (after the dwell)."""

ACTIVITY_GRACE_S: Final = 5.0
"""Seconds: how long the user must be active before compute that waits for idleness stops."""

TOMORROW_AT: Final = time(8, 0)
"""Local wall-clock time at which a snooze until "tomorrow" ends."""

SnoozeChoice = Literal["30m", "1h", "tomorrow"]
SNOOZE_CHOICES: Final[tuple[SnoozeChoice, ...]] = get_args(SnoozeChoice)

_DAY_LABELS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class Cause(StrEnum):
    """Why compute runs or does not; the tray may pick its icon from it."""

    COMPUTING = "computing"
    PAUSED = "paused"
    BATTERY = "battery"
    SCHEDULE = "schedule"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Decision:
    """Compute now or not, why (in words for the tray), and since when ``compute`` has had this value.

    ``cause`` is ``reason`` as a value for code. ``pending_since`` is set while a switch
    is wanted but held back by the hysteresis: when it was first wanted.
    """

    compute: bool
    reason: str
    since: datetime
    cause: Cause
    pending_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Block:
    cause: Cause
    reason: str


def decide(
    now: datetime,
    *,
    idle_s: float | None,
    on_battery: bool | None,
    settings: Settings,
    user_paused_until: datetime | None,
    previous: Decision | None,
) -> Decision:
    """The decision for ``now`` under the rules of this module's docstring; pure and total."""
    idle = idle_s if idle_s is not None and math.isfinite(idle_s) and idle_s >= 0 else None
    blocks = _blocks(now, idle, on_battery, settings, user_paused_until)
    want = not blocks
    computing_reason = "computing" if idle is not None or not settings.only_when_idle else "computing (idle time is unknown on this system)"

    if previous is None:
        return _settled(want, blocks, computing_reason, since=now)
    since = min(previous.since, now)
    if want == previous.compute:
        return _settled(want, blocks, computing_reason, since=since)

    pending = previous.pending_since if previous.pending_since is not None and previous.pending_since <= now else now
    by_user = (bool(blocks) and blocks[0].cause is Cause.PAUSED) or previous.cause is Cause.PAUSED
    dwelt = _seconds(since, now) >= MIN_DWELL_S
    if by_user or (dwelt and _confirmed(want, blocks, previous.cause, pending, now, idle)):
        return _settled(want, blocks, computing_reason, since=now)
    if previous.compute:
        top = blocks[0]
        reason = f"computing, stopping soon: {top.reason}" if top.cause in (Cause.BATTERY, Cause.SCHEDULE) else computing_reason
        return Decision(True, reason, since, Cause.COMPUTING, pending)
    return Decision(False, "resuming soon", since, previous.cause, pending)


def snooze_until(now: datetime, choice: SnoozeChoice) -> datetime:
    """When a pause chosen in the tray ends: in 30 minutes, in an hour, or the next day at 08:00 local.

    "tomorrow" is always the next calendar day, even shortly after midnight; ``now``'s
    tzinfo is kept. Raises :class:`ConfigError` for any other choice.
    """
    if choice == "30m":
        return now + timedelta(minutes=30)
    if choice == "1h":
        return now + timedelta(hours=1)
    if choice == "tomorrow":
        return datetime.combine(now.date() + timedelta(days=1), TOMORROW_AT, tzinfo=now.tzinfo)
    raise ConfigError(f"unknown snooze choice {choice!r}", hint=f"use one of {', '.join(SNOOZE_CHOICES)}")


def _blocks(now: datetime, idle_s: float | None, on_battery: bool | None, settings: Settings, paused_until: datetime | None) -> list[_Block]:
    blocks = []
    if paused_until is not None and now < paused_until:
        blocks.append(_Block(Cause.PAUSED, f"paused by you until {_when(paused_until, now)}"))
    if settings.pause_on_battery and on_battery is True:
        blocks.append(_Block(Cause.BATTERY, "on battery"))
    if not settings.schedule.allows(now):
        blocks.append(_Block(Cause.SCHEDULE, f"outside your schedule ({settings.schedule.describe_day(now.weekday())})"))
    if settings.only_when_idle and idle_s is not None and idle_s < settings.idle_minutes * 60:
        blocks.append(_Block(Cause.BUSY, f"waiting until idle for {settings.idle_minutes} min"))
    return blocks


def _confirmed(want: bool, blocks: list[_Block], stopped_for: Cause, pending: datetime, now: datetime, idle_s: float | None) -> bool:
    wanted_for = _seconds(pending, now)
    if want:
        return wanted_for >= (BATTERY_CONFIRM_S if stopped_for is Cause.BATTERY else SCHEDULE_CONFIRM_S if stopped_for is Cause.SCHEDULE else 0.0)
    for block in blocks:
        if block.cause is Cause.SCHEDULE and wanted_for >= SCHEDULE_CONFIRM_S:
            return True
        if block.cause is Cause.BATTERY and wanted_for >= BATTERY_CONFIRM_S:
            return True
        # Busy: the latest input came at least the grace after the user was first seen back.
        if block.cause is Cause.BUSY and idle_s is not None and wanted_for - idle_s >= ACTIVITY_GRACE_S:
            return True
    return False


def _settled(want: bool, blocks: list[_Block], computing_reason: str, *, since: datetime) -> Decision:
    if want:
        return Decision(True, computing_reason, since, Cause.COMPUTING)
    return Decision(False, blocks[0].reason, since, blocks[0].cause)


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def _when(moment: datetime, now: datetime) -> str:
    """``14:30`` today, ``Tue 08:00`` within the coming week, else ``2025-03-01 08:00``."""
    days_ahead = (moment.date() - now.date()).days
    if days_ahead == 0:
        return f"{moment:%H:%M}"
    if 0 < days_ahead < 7:
        return f"{_DAY_LABELS[moment.weekday()]} {moment:%H:%M}"
    return f"{moment:%Y-%m-%d %H:%M}"
