"""Settings: validation, JSON round trip, atomic save, and reading damaged files without crashing."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from app.settings import (
    SCHEMA_VERSION,
    KnownPool,
    Settings,
    TimeWindow,
    WeeklySchedule,
    default_settings_path,
    load_settings,
    parse_settings,
    read_settings,
    save_settings,
    settings_to_json,
)
from core.errors import ConfigError
from core.types import PoolId

OFFICE_HOURS = WeeklySchedule.from_ranges({d: [(9 * 60, 17 * 60)] for d in range(5)})


def a_full_settings() -> Settings:
    return Settings(
        cpu_threads=3,
        memory_cap_gib=6.5,
        devices=(("cuda:0", True), ("cuda:1", False)),
        only_when_idle=True,
        idle_minutes=12,
        pause_on_battery=False,
        schedule=WeeklySchedule.from_ranges({0: [(540, 720), (780, 1020)], 6: [(0, 1440)]}),
        start_at_login=True,
        pools=(KnownPool(PoolId("fp-1"), "lab", "wss://10.0.0.2:7000"), KnownPool(PoolId("fp-2"))),
    )


# --- construction and validation ---


def test_defaults_are_safe() -> None:
    s = Settings()
    assert (s.cpu_threads, s.memory_cap_gib, s.devices, s.only_when_idle) == (0, None, (), False)
    assert s.pause_on_battery and not s.start_at_login and s.schedule.is_always and s.pools == ()
    assert hash(s) == hash(Settings())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu_threads", -1, "cpu_threads"),
        ("cpu_threads", 2.0, "cpu_threads"),
        ("cpu_threads", True, "cpu_threads"),
        ("memory_cap_gib", 0, "memory_cap_gib"),
        ("memory_cap_gib", float("nan"), "memory_cap_gib"),
        ("memory_cap_gib", float("inf"), "memory_cap_gib"),
        ("memory_cap_gib", "8", "memory_cap_gib"),
        ("idle_minutes", 0, "idle_minutes"),
        ("idle_minutes", 24 * 60 + 1, "idle_minutes"),
        ("only_when_idle", 1, "only_when_idle"),
        ("pause_on_battery", "yes", "pause_on_battery"),
        ("start_at_login", None, "start_at_login"),
        ("devices", (("cuda:0", 1),), "cuda:0"),
        ("devices", (("", True),), "device name"),
        ("devices", (("cuda:0", True), ("cuda:0", False)), "twice"),
        ("schedule", {"mon": []}, "WeeklySchedule"),
        ("pools", (KnownPool(PoolId("a")), KnownPool(PoolId("a"))), "twice"),
    ],
)
def test_bad_values_raise_config_error_with_a_hint(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert err.value.hint


@pytest.mark.parametrize(("start", "end"), [(-1, 10), (10, 10), (20, 10), (0, 1441), (0.5, 10)])
def test_bad_time_windows_raise(start: int, end: int) -> None:
    with pytest.raises(ConfigError, match="schedule window"):
        TimeWindow(start, end)


def test_devices_accept_a_mapping_and_are_sorted_pairs() -> None:
    s = Settings(devices={"cuda:1": False, "cuda:0": True})  # type: ignore[arg-type]
    assert s.devices == (("cuda:0", True), ("cuda:1", False))
    assert s.device_enabled("cuda:0") and not s.device_enabled("cuda:1") and s.device_enabled("mps")
    assert not s.with_device("cuda:0", False).device_enabled("cuda:0")


def test_pools_are_replaced_by_id_and_forgotten() -> None:
    s = Settings().with_pool(KnownPool(PoolId("a"), "old")).with_pool(KnownPool(PoolId("b")))
    s = s.with_pool(KnownPool(PoolId("a"), "new"))
    assert [(p.pool_id, p.name) for p in s.pools] == [("b", ""), ("a", "new")]
    assert [p.pool_id for p in s.without_pool(PoolId("a")).pools] == ["b"]


def test_schedule_merges_overlapping_windows_and_describes_days() -> None:
    s = WeeklySchedule.from_ranges({0: [(780, 1020), (540, 720), (700, 800)], 2: [(0, 60), (60, 120)]})
    assert s.days[0] == (TimeWindow(540, 1020),)
    assert s.days[2] == (TimeWindow(0, 120),)
    assert s.describe_day(0) == "Mon 09:00–17:00"
    assert s.describe_day(6) == "Sun: no hours"
    assert WeeklySchedule.from_ranges({1: [(0, 1440)]}).describe_day(1) == "Tue 00:00–24:00"


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (datetime(2024, 1, 1, 8, 59, 59), False),  # Monday
        (datetime(2024, 1, 1, 9, 0), True),
        (datetime(2024, 1, 1, 16, 59, 59), True),
        (datetime(2024, 1, 1, 17, 0), False),  # end is exclusive
        (datetime(2024, 1, 6, 12, 0), False),  # Saturday has no window
    ],
)
def test_schedule_allows_half_open_windows(when: datetime, allowed: bool) -> None:
    assert OFFICE_HOURS.allows(when) is allowed
    assert WeeklySchedule().allows(when)


def test_bad_weekday_raises() -> None:
    with pytest.raises(ConfigError, match="weekday"):
        WeeklySchedule.from_ranges({7: [(0, 10)]})


# --- persistence ---


def test_missing_file_gives_defaults_without_warnings(tmp_path: Path) -> None:
    assert read_settings(tmp_path / "nope.json") == (Settings(), [])
    assert load_settings(tmp_path / "nope.json") == Settings()


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "settings.json"
    original = a_full_settings()
    save_settings(original, path)
    assert read_settings(path) == (original, [])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["schedule"] == {"mon": [[540, 720], [780, 1020]], "sun": [[0, 1440]]}
    assert data["devices"] == {"cuda:0": True, "cuda:1": False}


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    save_settings(Settings(cpu_threads=1), path)
    save_settings(Settings(cpu_threads=2), path)
    assert load_settings(path).cpu_threads == 2
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_save_to_an_unwritable_place_raises_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="could not save settings") as err:
        save_settings(Settings(), blocker / "settings.json")
    assert err.value.hint


def test_default_path_is_in_the_user_config_dir() -> None:
    path = default_settings_path()
    assert path.name == "settings.json" and "butterfly" in str(path.parent).lower()


windows = st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(lambda w: w[0] < w[1])
settings_strategy = st.builds(
    Settings,
    cpu_threads=st.integers(0, 4096),
    memory_cap_gib=st.none() | st.floats(min_value=0.01, max_value=4096, allow_nan=False),
    devices=st.dictionaries(st.text(min_size=1).filter(str.strip), st.booleans(), max_size=4).map(lambda d: tuple(sorted(d.items()))),
    only_when_idle=st.booleans(),
    idle_minutes=st.integers(1, 1440),
    pause_on_battery=st.booleans(),
    schedule=st.dictionaries(st.integers(0, 6), st.lists(windows, max_size=3), max_size=7).map(WeeklySchedule.from_ranges),
    start_at_login=st.booleans(),
    pools=st.dictionaries(st.text(min_size=1).filter(str.strip), st.tuples(st.text(), st.text()), max_size=3).map(
        lambda d: tuple(KnownPool(PoolId(k), n, a) for k, (n, a) in d.items())
    ),
)


@hyp_settings(max_examples=60, deadline=None)
@given(settings_strategy)
def test_any_settings_round_trip_through_json(original: Settings) -> None:
    text = json.dumps(settings_to_json(original), ensure_ascii=False)
    assert parse_settings(json.loads(text)) == (original, [])


# --- damaged files: defaults for the bad parts, warnings, never a crash ---


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe\x00garbage", b"", b"[1, 2, 3]", b"null", b'"settings"', b"[" * 100_000],
    ids=["broken-json", "binary", "empty", "list", "null", "string", "deeply-nested"],
)
def test_corrupt_files_give_defaults_and_one_warning(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(raw)
    settings, warnings = read_settings(path)
    assert settings == Settings()
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_a_directory_in_place_of_the_file_gives_defaults(tmp_path: Path) -> None:
    settings, warnings = read_settings(tmp_path)
    assert settings == Settings() and len(warnings) == 1


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("cpu_threads", "four"),
        ("cpu_threads", -3),
        ("memory_cap_gib", float("nan")),
        ("memory_cap_gib", -1),
        ("memory_cap_gib", 10**400),
        ("idle_minutes", 5.5),
        ("only_when_idle", "true"),
        ("pause_on_battery", 0),
        ("start_at_login", []),
        ("schedule", {"mon": [[600, 500]]}),
        ("schedule", {"funday": [[0, 10]]}),
        ("schedule", {"mon": [[0, 10, 20]]}),
        ("schedule", [[0, 10]]),
        ("devices", ["cuda:0"]),
        ("pools", {"pool_id": "x"}),
    ],
)
def test_a_bad_field_falls_back_to_its_default_and_keeps_the_rest(field: str, bad: object) -> None:
    data = settings_to_json(a_full_settings())
    data[field] = bad
    settings, warnings = parse_settings(data)
    assert getattr(settings, field) == getattr(Settings(), field)
    assert settings == replace(a_full_settings(), **{field: getattr(Settings(), field)})
    assert len(warnings) == 1 and field in warnings[0]


def test_bad_device_and_pool_entries_are_dropped_one_by_one() -> None:
    data = settings_to_json(Settings())
    data["devices"] = {"cuda:0": True, "cuda:1": "off", "": True}
    data["pools"] = [{"pool_id": "a", "name": "A"}, {"pool_id": ""}, "junk", {"pool_id": "a", "name": "again"}, {"pool_id": "b", "address": 7}]
    settings, warnings = parse_settings(data)
    assert settings.devices == (("cuda:0", True),)
    assert settings.pools == (KnownPool(PoolId("a"), "A"),)
    assert len(warnings) == 6


def test_unknown_keys_and_newer_schema_are_reported_not_fatal() -> None:
    data = settings_to_json(Settings(cpu_threads=2))
    data["schema_version"] = SCHEMA_VERSION + 1
    data["telemetry"] = True
    settings, warnings = parse_settings(data)
    assert settings == Settings(cpu_threads=2)
    assert any("newer" in w for w in warnings) and any("telemetry" in w for w in warnings)


def test_a_missing_schema_version_reads_as_current() -> None:
    settings, warnings = parse_settings({"cpu_threads": 2})
    assert settings == Settings(cpu_threads=2) and warnings == []


def test_load_settings_logs_each_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"cpu_threads": "many", "idle_minutes": 0}))
    with caplog.at_level("WARNING"):
        assert load_settings(path) == Settings()
    assert len([r for r in caplog.records if "cpu_threads" in r.getMessage() or "idle_minutes" in r.getMessage()]) == 2
