"""The one interface every platform backend offers, and the small pieces they share.

A backend answers three questions for the compute policy and the tray — how long the
user has been idle, whether the machine runs on battery, whether Butterfly starts at
login — and switches starting at login on or off. It never raises from a probe: a
value it cannot measure is ``None``, and the policy treats ``None`` as "unknown".
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from core.errors import ConfigError

PROBE_TIMEOUT_S: Final = 2.0
"""Seconds a helper program (xprintidle, ioreg, gdbus) may take before its answer counts as unknown."""

CommandRunner = Callable[[Sequence[str]], "str | None"]
"""Runs a program and returns its standard output, or None when it is missing, fails or times out."""

BatteryProbe = Callable[[], "bool | None"]
IdleProbe = Callable[[], "float | None"]


@runtime_checkable
class PlatformBackend(Protocol):
    """Idle time, battery state and start-at-login for one operating system.

    ``idle_seconds`` and ``on_battery`` never raise and return None when unknown.
    ``set_autostart`` raises :class:`ConfigError` when it cannot do what was asked;
    ``autostart_supported`` says beforehand whether it can at all.
    """

    name: str
    autostart_supported: bool

    def idle_seconds(self) -> float | None:
        """Seconds since the user's last keyboard or mouse input, or None when unknown."""
        ...

    def on_battery(self) -> bool | None:
        """True on battery, False on mains power, None when unknown (e.g. no battery)."""
        ...

    def autostart_enabled(self) -> bool:
        """Whether Butterfly is set to start when the user logs in."""
        ...

    def set_autostart(self, enabled: bool, command: Sequence[str]) -> None:
        """Start ``command`` (program and arguments) at login, or stop doing so; idempotent."""
        ...


def battery_from_psutil(battery: object | None) -> bool | None:
    """On battery from a ``psutil.sensors_battery()`` result: None when there is no battery or no answer."""
    plugged = getattr(battery, "power_plugged", None)
    return None if plugged is None else not plugged


def psutil_on_battery() -> bool | None:
    """Whether this machine runs on battery, through psutil; None when psutil cannot tell. Never raises."""
    try:
        import psutil

        return battery_from_psutil(psutil.sensors_battery())
    except Exception:  # noqa: BLE001 - a probe never raises; unknown is a valid answer
        return None


def run_quietly(argv: Sequence[str]) -> str | None:
    """Standard output of ``argv`` when it exits 0 within ``PROBE_TIMEOUT_S``; None otherwise. Never raises."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return result.stdout if result.returncode == 0 else None


def checked_command(command: Sequence[str]) -> list[str]:
    """``command`` as a list after checking it is a non-empty program with text arguments.

    Raises :class:`ConfigError` for an empty command, a non-text argument, a NUL
    character or text that has no UTF-8 form (no operating system can store those
    in a start-at-login entry).
    """
    if isinstance(command, str) or not command:
        raise ConfigError(f"the start-at-login command must be a non-empty list of arguments, got {command!r}", hint="pass [program, arg, ...]")
    args = list(command)
    for arg in args:
        if not isinstance(arg, str) or "\0" in arg or not _encodable(arg):
            raise ConfigError(f"start-at-login argument {arg!r} must be valid text without NUL characters", hint="pass [program, arg, ...] as strings")
    if not args[0]:
        raise ConfigError("the start-at-login program is empty", hint="pass the path of the program first")
    return args


def autostart_failed(path: Path | str, err: OSError) -> ConfigError:
    """The error raised when a start-at-login entry cannot be written or removed."""
    return ConfigError(f"could not change starting at login ({path}): {err}", hint="check that this location is writable, or turn the option off")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
