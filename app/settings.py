"""The volunteer's settings: what Butterfly may use on this machine, and when.

:class:`Settings` is one frozen value, validated on construction (a bad value raises
:class:`~core.errors.ConfigError` naming the field and how to fix it). On disk it is one
JSON object in the user's config folder (``settings.json`` in
``platformdirs.user_config_dir("butterfly")``) with a ``schema_version`` field.

Reading never crashes the app: a missing file gives the defaults; an unreadable or
corrupt file gives the defaults plus a warning; each bad field falls back to its own
default with a warning naming it, and the good fields are kept. Containers that hold
independent entries (``devices``, ``pools``) drop only their bad entries; the schedule
is one field (half a schedule would change its meaning). Writing is atomic: a temporary
file in the same folder, then ``os.replace``.

The weekly schedule lists, per weekday, the allowed half-open minute ranges
``[start, end)`` counted from local midnight (0 … 1440). A window across midnight is two
windows, one on each day. A schedule with no window on any day always allows compute.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from platformdirs import user_config_dir

from core.errors import ConfigError
from core.types import PoolId

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
"""Version of the JSON layout written by :func:`save_settings`."""

SETTINGS_FILE_NAME: Final = "settings.json"
MINUTES_PER_DAY: Final = 24 * 60
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""JSON keys of the weekdays, indexed like :meth:`datetime.weekday` (Monday = 0)."""

_DAY_LABELS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_CPU_THREADS: Final = 4096
MAX_MEMORY_CAP_GIB: Final = 1 << 20
MAX_IDLE_MINUTES: Final = MINUTES_PER_DAY


@dataclass(frozen=True, slots=True, order=True)
class TimeWindow:
    """An allowed half-open range ``[start, end)`` of minutes after local midnight."""

    start: int
    end: int

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not _is_int(value):
                raise ConfigError(f"schedule window {name} must be a whole number of minutes, got {value!r}", hint="use minutes after midnight, e.g. 540 for 09:00")
        if not 0 <= self.start < self.end <= MINUTES_PER_DAY:
            raise ConfigError(
                f"schedule window [{self.start}, {self.end}) is not within one day",
                hint="use 0 <= start < end <= 1440; split a window across midnight into two days",
            )

    def __contains__(self, minute: object) -> bool:
        return _is_int(minute) and self.start <= minute < self.end  # type: ignore[operator]

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}–{_hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class WeeklySchedule:
    """When compute is allowed: per weekday (Monday = 0) a sorted tuple of disjoint windows.

    Overlapping or touching windows of a day are merged on construction, so two
    schedules that allow the same minutes compare equal.
    """

    days: tuple[tuple[TimeWindow, ...], ...] = ((),) * 7

    def __post_init__(self) -> None:
        if not isinstance(self.days, tuple) or len(self.days) != 7:
            raise ConfigError("a weekly schedule needs exactly 7 days", hint="give one (possibly empty) list of windows per weekday, Monday first")
        merged = []
        for day in self.days:
            if not all(isinstance(w, TimeWindow) for w in day):
                raise ConfigError(f"schedule days must hold TimeWindow values, got {day!r}", hint="build it with WeeklySchedule.from_ranges")
            merged.append(_merge(day))
        object.__setattr__(self, "days", tuple(merged))

    @classmethod
    def from_ranges(cls, ranges: Mapping[int, Iterable[tuple[int, int]]]) -> WeeklySchedule:
        """A schedule from ``{weekday: [(start_minute, end_minute), ...]}``; absent days allow nothing."""
        days: list[tuple[TimeWindow, ...]] = [() for _ in range(7)]
        for weekday, windows in ranges.items():
            if not _is_int(weekday) or not 0 <= weekday < 7:
                raise ConfigError(f"weekday must be 0 (Monday) … 6 (Sunday), got {weekday!r}", hint="Monday is 0, as in datetime.weekday()")
            days[weekday] = tuple(TimeWindow(start, end) for start, end in windows)
        return cls(tuple(days))

    @property
    def is_always(self) -> bool:
        """True when no window is set on any day, which allows compute at every moment."""
        return not any(self.days)

    def allows(self, now: datetime) -> bool:
        """Whether ``now`` (local wall-clock time) lies in an allowed window; always True when empty."""
        if self.is_always:
            return True
        minute = now.hour * 60 + now.minute
        return any(minute in window for window in self.days[now.weekday()])

    def describe_day(self, weekday: int) -> str:
        """One day in words for people, e.g. ``"Mon 09:00–12:00, 13:00–17:00"`` or ``"Sun: no hours"``."""
        windows = self.days[weekday]
        if not windows:
            return f"{_DAY_LABELS[weekday]}: no hours"
        return f"{_DAY_LABELS[weekday]} " + ", ".join(str(w) for w in windows)


@dataclass(frozen=True, slots=True)
class KnownPool:
    """A pool the volunteer has joined, pinned to its pool id (the pool key's fingerprint) on first join."""

    pool_id: PoolId
    name: str = ""
    address: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pool_id, str) or not self.pool_id.strip():
            raise ConfigError(f"a known pool needs a non-empty pool id, got {self.pool_id!r}", hint="forget the pool and join it again")
        if not isinstance(self.name, str) or not isinstance(self.address, str):
            raise ConfigError(f"pool {self.pool_id}: name and address must be text", hint="forget the pool and join it again")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the volunteer decides about sharing this machine. Defaults are safe to run with.

    ``cpu_threads``: compute threads, 0 = all cores. ``memory_cap_gib``: memory Butterfly
    may use, None = automatic. ``devices``: per-accelerator switches as sorted
    ``(device, enabled)`` pairs, e.g. ``(("cuda:0", True),)`` (a mapping is accepted and
    converted); unlisted devices are enabled.
    ``only_when_idle`` + ``idle_minutes``: compute only after that long without input.
    ``pause_on_battery``: stop while the machine runs on battery. ``schedule``: when compute
    is allowed. ``start_at_login``: start the app when the user logs in. ``pools``: joined
    pools with their pinned ids, unique by pool id.
    """

    cpu_threads: int = 0
    memory_cap_gib: float | None = None
    devices: tuple[tuple[str, bool], ...] = ()
    only_when_idle: bool = False
    idle_minutes: int = 5
    pause_on_battery: bool = True
    schedule: WeeklySchedule = field(default_factory=WeeklySchedule)
    start_at_login: bool = False
    pools: tuple[KnownPool, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            checked = _VALIDATORS[f.name](getattr(self, f.name))
            object.__setattr__(self, f.name, checked)

    def device_enabled(self, device: str) -> bool:
        """Whether the user allows ``device`` (e.g. ``"cuda:0"``); devices never listed are allowed."""
        return dict(self.devices).get(device, True)

    def with_device(self, device: str, enabled: bool) -> Settings:
        """A copy with ``device`` switched on or off."""
        toggles = dict(self.devices)
        toggles[device] = enabled
        return replace(self, devices=tuple(toggles.items()))

    def with_pool(self, pool: KnownPool) -> Settings:
        """A copy that remembers ``pool``, replacing an entry with the same pool id."""
        others = tuple(p for p in self.pools if p.pool_id != pool.pool_id)
        return replace(self, pools=(*others, pool))

    def without_pool(self, pool_id: PoolId) -> Settings:
        """A copy that forgets the pool with ``pool_id`` (and its pin)."""
        return replace(self, pools=tuple(p for p in self.pools if p.pool_id != pool_id))


def default_settings_path() -> Path:
    """Where the settings live for this user: ``<user config dir>/butterfly/settings.json``."""
    return Path(user_config_dir("butterfly", appauthor=False)) / SETTINGS_FILE_NAME


def settings_to_json(settings: Settings) -> dict[str, Any]:
    """The JSON object that :func:`parse_settings` reads back to an equal :class:`Settings`."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cpu_threads": settings.cpu_threads,
        "memory_cap_gib": settings.memory_cap_gib,
        "devices": dict(settings.devices),
        "only_when_idle": settings.only_when_idle,
        "idle_minutes": settings.idle_minutes,
        "pause_on_battery": settings.pause_on_battery,
        "schedule": {
            WEEKDAYS[i]: [[w.start, w.end] for w in day] for i, day in enumerate(settings.schedule.days) if day
        },
        "start_at_login": settings.start_at_login,
        "pools": [{"pool_id": p.pool_id, "name": p.name, "address": p.address} for p in settings.pools],
    }


def parse_settings(data: object) -> tuple[Settings, list[str]]:
    """Settings from decoded JSON, and one warning per value that was ignored; never raises.

    Each field is checked on its own: a bad field takes its default and adds a
    warning; a bad entry of ``devices`` or ``pools`` is dropped with a warning.
    """
    warnings: list[str] = []
    if not isinstance(data, dict):
        return Settings(), [f"settings must be a JSON object, found {type(data).__name__}; using defaults"]
    version = data.get("schema_version", SCHEMA_VERSION)
    if not _is_int(version) or version < 1:
        warnings.append(f"schema_version {version!r} is not valid; reading the file as version {SCHEMA_VERSION}")
    elif version > SCHEMA_VERSION:
        warnings.append(f"settings were written by a newer Butterfly (schema {version}); settings it does not know are ignored")
    known = {f.name for f in fields(Settings)}
    for key in data:
        if key not in known and key != "schema_version":
            warnings.append(f"unknown setting {key!r} ignored")

    values: dict[str, Any] = {}
    for name in known - {"devices", "pools", "schedule"}:
        if name in data:
            _take(values, warnings, name, _VALIDATORS[name], data[name])
    if "schedule" in data:
        _take(values, warnings, "schedule", _schedule_from_json, data["schedule"])
    if "devices" in data:
        values["devices"] = _devices_from_json(data["devices"], warnings)
    if "pools" in data:
        values["pools"] = _pools_from_json(data["pools"], warnings)
    return Settings(**values), warnings


def read_settings(path: Path | None = None) -> tuple[Settings, list[str]]:
    """Settings from ``path`` (default: :func:`default_settings_path`) and the warnings; never raises.

    A missing file gives the defaults and no warning; an unreadable or non-JSON
    file gives the defaults and one warning.
    """
    path = path if path is not None else default_settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), []
    except (OSError, UnicodeDecodeError) as err:
        return Settings(), [f"could not read settings from {path} ({err}); using defaults"]
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        return Settings(), [f"settings file {path} is not valid JSON ({err}); using defaults"]
    settings, warnings = parse_settings(data)
    return settings, [f"{path}: {w}" for w in warnings]


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path`` (default: :func:`default_settings_path`); never raises.

    Each warning of :func:`read_settings` is logged once; use that function to show them.
    """
    settings, warnings = read_settings(path)
    for warning in warnings:
        log.warning("%s", warning)
    return settings


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Write ``settings`` to ``path`` atomically: readers see the old file or the new one, never half.

    Raises :class:`ConfigError` when the folder or file cannot be written.
    """
    path = path if path is not None else default_settings_path()
    text = json.dumps(settings_to_json(settings), indent=2, ensure_ascii=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text.encode("utf-8"))
    except OSError as err:
        raise ConfigError(f"could not save settings to {path}: {err}", hint=f"check that {path.parent} is writable") from err


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` via a synced temporary file in the same folder; raises OSError."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# --- validation: one function per field, shared by the constructor and the JSON reader ---


def _check_cpu_threads(value: object) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_CPU_THREADS:  # type: ignore[operator]
        raise ConfigError(f"cpu_threads must be a whole number from 0 to {MAX_CPU_THREADS}, got {value!r}", hint="use 0 for all cores")
    return value  # type: ignore[return-value]


def _check_memory_cap(value: object) -> float | None:
    if value is None:
        return None
    # NaN and infinities fail the range test too.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_MEMORY_CAP_GIB:
        raise ConfigError(f"memory_cap_gib must be a positive number of GiB or null, got {value!r}", hint="use null to let Butterfly choose")
    return float(value)


def _check_devices(value: object) -> tuple[tuple[str, bool], ...]:
    pairs = list(value.items()) if isinstance(value, Mapping) else value
    if not isinstance(pairs, (list, tuple)):
        raise ConfigError(f"devices must be (device, enabled) pairs, got {value!r}", hint='e.g. (("cuda:0", True),)')
    seen: dict[str, bool] = {}
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ConfigError(f"devices must be (device, enabled) pairs, got {pair!r}", hint='e.g. (("cuda:0", True),)')
        device, enabled = pair
        _check_device_entry(device, enabled)
        if device in seen:
            raise ConfigError(f"device {device!r} is listed twice", hint="list each device once")
        seen[device] = enabled
    return tuple(sorted(seen.items()))


def _check_device_entry(device: object, enabled: object) -> None:
    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"a device name must be non-empty text, got {device!r}", hint='use names like "cuda:0" or "mps"')
    if not isinstance(enabled, bool):
        raise ConfigError(f"device {device!r} must be switched on or off with true/false, got {enabled!r}", hint="use true or false")


def _check_bool(name: str) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}", hint="use true or false")
        return value

    return check


def _check_idle_minutes(value: object) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_IDLE_MINUTES:  # type: ignore[operator]
        raise ConfigError(f"idle_minutes must be a whole number from 1 to {MAX_IDLE_MINUTES}, got {value!r}", hint="e.g. 5")
    return value  # type: ignore[return-value]


def _check_schedule(value: object) -> WeeklySchedule:
    if not isinstance(value, WeeklySchedule):
        raise ConfigError(f"schedule must be a WeeklySchedule, got {type(value).__name__}", hint="build it with WeeklySchedule.from_ranges")
    return value


def _check_pools(value: object) -> tuple[KnownPool, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, KnownPool) for p in value):
        raise ConfigError(f"pools must be a tuple of KnownPool, got {value!r}", hint="use Settings.with_pool")
    ids = [p.pool_id for p in value]
    if len(set(ids)) != len(ids):
        raise ConfigError("a pool is listed twice", hint="use Settings.with_pool, which replaces an entry with the same id")
    return tuple(value)


_VALIDATORS: Final[dict[str, Callable[[object], Any]]] = {
    "cpu_threads": _check_cpu_threads,
    "memory_cap_gib": _check_memory_cap,
    "devices": _check_devices,
    "only_when_idle": _check_bool("only_when_idle"),
    "idle_minutes": _check_idle_minutes,
    "pause_on_battery": _check_bool("pause_on_battery"),
    "schedule": _check_schedule,
    "start_at_login": _check_bool("start_at_login"),
    "pools": _check_pools,
}


# --- JSON readers for the container fields ---


def _take(values: dict[str, Any], warnings: list[str], name: str, convert: Callable[[object], Any], raw: object) -> None:
    try:
        values[name] = convert(raw)
    except ConfigError as err:
        warnings.append(f"{name}: {err.message}; using the default")


def _schedule_from_json(raw: object) -> WeeklySchedule:
    if not isinstance(raw, dict):
        raise ConfigError(f"schedule must be an object of weekdays, got {raw!r}")
    ranges: dict[int, list[tuple[int, int]]] = {}
    for key, windows in raw.items():
        if key not in WEEKDAYS:
            raise ConfigError(f"unknown weekday {key!r} (use {', '.join(WEEKDAYS)})")
        if not isinstance(windows, list) or not all(isinstance(w, list) and len(w) == 2 for w in windows):
            raise ConfigError(f"{key} must be a list of [start, end] minute pairs, got {windows!r}")
        ranges[WEEKDAYS.index(key)] = [(w[0], w[1]) for w in windows]
    return WeeklySchedule.from_ranges(ranges)


def _devices_from_json(raw: object, warnings: list[str]) -> tuple[tuple[str, bool], ...]:
    if not isinstance(raw, dict):
        warnings.append(f"devices: must be an object of device -> true/false, got {raw!r}; using the default")
        return ()
    kept: list[tuple[str, bool]] = []
    for device, enabled in raw.items():
        try:
            _check_device_entry(device, enabled)
        except ConfigError as err:
            warnings.append(f"devices: {err.message}; entry ignored")
            continue
        kept.append((device, enabled))
    return tuple(sorted(kept))


def _pools_from_json(raw: object, warnings: list[str]) -> tuple[KnownPool, ...]:
    if not isinstance(raw, list):
        warnings.append(f"pools: must be a list, got {type(raw).__name__}; using the default")
        return ()
    kept: dict[str, KnownPool] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            warnings.append(f"pools: entry {entry!r} is not an object; entry ignored")
            continue
        try:
            pool = KnownPool(PoolId(entry.get("pool_id")), entry.get("name", ""), entry.get("address", ""))  # type: ignore[arg-type]
        except ConfigError as err:
            warnings.append(f"pools: {err.message}; entry ignored")
            continue
        if pool.pool_id in kept:
            warnings.append(f"pools: pool {pool.pool_id} is listed twice; the first entry is kept")
            continue
        kept[pool.pool_id] = pool
    return tuple(kept.values())


def _merge(windows: Sequence[TimeWindow]) -> tuple[TimeWindow, ...]:
    merged: list[TimeWindow] = []
    for window in sorted(windows):
        if merged and window.start <= merged[-1].end:
            merged[-1] = TimeWindow(merged[-1].start, max(merged[-1].end, window.end))
        else:
            merged.append(window)
    return tuple(merged)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
