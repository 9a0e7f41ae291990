"""The weekly schedule as text people type: ``"09:00-12:00, 13:00-17:30"`` per day.

The settings dialog shows one such line per weekday; :func:`parse_day` reads it back
into minute ranges for :meth:`app.settings.WeeklySchedule.from_ranges`. Pure.
"""

from __future__ import annotations

import re

from app.settings import MINUTES_PER_DAY, WeeklySchedule
from core.errors import ConfigError

_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*[-–]\s*(\d{1,2}):(\d{2})")


def format_day(schedule: WeeklySchedule, weekday: int) -> str:
    """One day's windows as text, e.g. ``"09:00-12:00, 13:00-17:00"``; empty when the day has none."""
    return ", ".join(f"{_hhmm(w.start)}-{_hhmm(w.end)}" for w in schedule.days[weekday])


def parse_day(text: str) -> list[tuple[int, int]]:
    """Minute ranges ``[(start, end), …]`` from a day's text; ``24:00`` ends a window at midnight.

    Empty text means no hours that day. Raises :class:`ConfigError` naming the part
    that is not ``HH:MM-HH:MM`` or whose end is not after its start.
    """
    ranges = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _RANGE.fullmatch(part)
        if match is None:
            raise ConfigError(f"{part!r} is not a time range", hint="write ranges like 09:00-17:00, separated by commas")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if m1 > 59 or m2 > 59 or h1 > 23 or end > MINUTES_PER_DAY or end <= start:
            raise ConfigError(f"{part!r} is not a range within one day", hint="the end must come after the start, at most 24:00")
        ranges.append((start, end))
    return ranges


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
