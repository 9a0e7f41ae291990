"""The schedule as typed text: read back exactly what is shown; bad text says which part is wrong."""

from __future__ import annotations

import pytest

from app.schedule_text import format_day, parse_day
from app.settings import WeeklySchedule
from core.errors import ConfigError


def test_format_then_parse_is_identity() -> None:
    schedule = WeeklySchedule.from_ranges({0: [(540, 720), (780, 1440)], 6: [(0, 30)]})
    for day in range(7):
        assert WeeklySchedule.from_ranges({day: parse_day(format_day(schedule, day))}).days[day] == schedule.days[day]
    assert format_day(schedule, 0) == "09:00-12:00, 13:00-24:00"
    assert format_day(schedule, 1) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", []), (" 9:00 - 17:30 ", [(540, 1050)]), ("08:00–09:00,10:00-11:00,", [(480, 540), (600, 660)])],
)
def test_parse_day(text: str, expected: list[tuple[int, int]]) -> None:
    assert parse_day(text) == expected


@pytest.mark.parametrize("text", ["9-17", "09:00", "17:00-09:00", "24:00-24:30", "09:60-10:00", "10:00-25:00"])
def test_bad_days_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=text.split("-")[0][:2]):
        parse_day(text)
