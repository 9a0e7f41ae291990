"""Windows: the per-user Run key for start at login, idle time from GetLastInputInfo, battery from psutil.

Start at login is the value ``Butterfly`` under ``HKCU\\Software\\Microsoft\\Windows\\
CurrentVersion\\Run``: one command line of at most 260 characters, quoted so that the
Microsoft C runtime (``CommandLineToArgvW``) splits it back into the same arguments
(:func:`run_key_value`). ``winreg`` and the Win32 calls are reached only inside the
functions that need them, so this module imports on every OS.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from typing import Final, Protocol

from core.errors import ConfigError

from app.platform.base import BatteryProbe, IdleProbe, autostart_failed, checked_command, psutil_on_battery

RUN_KEY_PATH: Final = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE_NAME: Final = "Butterfly"
MAX_RUN_COMMAND_CHARS: Final = 260
"""Longest command line Windows accepts in a Run value (Microsoft, "Run and RunOnce Registry Keys")."""

_NOT_WINDOWS: Final = "the Windows registry exists only on Windows"
_TICK_MODULUS: Final = 1 << 32
_MS_PER_S: Final = 1000.0


def quote_windows_arg(arg: str) -> str:
    """One argument quoted so that ``CommandLineToArgvW`` reads it back unchanged.

    Plain arguments stay as they are; others go in double quotes, with each ``"``
    preceded by a backslash and the backslashes before a ``"`` (or the closing
    quote) doubled.
    """
    if arg and not any(c in ' \t\n\v"' for c in arg):
        return arg
    out = ['"']
    backslashes = 0
    for c in arg:
        if c == "\\":
            backslashes += 1
            continue
        if c == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + c)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def run_key_value(command: Sequence[str]) -> str:
    """The Run-key command line for ``command``: the program always quoted, then its quoted arguments.

    The program is read by Windows up to the next double quote, without escapes, so
    it may not contain one. Raises :class:`ConfigError` for an empty command, a
    program with a double quote, or a line longer than ``MAX_RUN_COMMAND_CHARS``.
    """
    program, *args = checked_command(command)
    if '"' in program:
        raise ConfigError(f"the program path {program!r} contains a double quote", hint="install Butterfly in a folder whose path has no double quotes")
    line = " ".join([f'"{program}"', *(quote_windows_arg(a) for a in args)])
    if len(line) > MAX_RUN_COMMAND_CHARS:
        raise ConfigError(
            f"the start-at-login command is {len(line)} characters; Windows allows {MAX_RUN_COMMAND_CHARS}",
            hint="install Butterfly in a shorter path",
        )
    return line


def idle_from_ticks(now_ticks: int, last_input_ticks: int) -> float:
    """Seconds between two 32-bit millisecond tick counts, correct across the wrap every 49.7 days."""
    return ((now_ticks - last_input_ticks) % _TICK_MODULUS) / _MS_PER_S


class RunKey(Protocol):
    """The values of the current user's Run key; tests substitute a dictionary."""

    def read(self, name: str) -> str | None:
        """The value's data, or None when it does not exist."""
        ...

    def write(self, name: str, value: str) -> None:
        """Create or replace the value (REG_SZ); raises OSError."""
        ...

    def delete(self, name: str) -> None:
        """Remove the value if present; raises OSError on other failures."""
        ...


class WinregRunKey:
    """:class:`RunKey` on the real registry through ``winreg``; raises OSError on other systems."""

    def read(self, name: str) -> str | None:
        """The value's data, or None when it does not exist."""
        if sys.platform != "win32":
            raise OSError(_NOT_WINDOWS)
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY_PATH) as key:
                value, _kind = winreg.QueryValueEx(key, name)
        except FileNotFoundError:
            return None
        return value if isinstance(value, str) else None

    def write(self, name: str, value: str) -> None:
        """Create or replace the value (REG_SZ)."""
        if sys.platform != "win32":
            raise OSError(_NOT_WINDOWS)
        import winreg

        with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, RUN_KEY_PATH, 0, winreg.KEY_SET_VALUE) as key:
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, value)

    def delete(self, name: str) -> None:
        """Remove the value if present."""
        if sys.platform != "win32":
            raise OSError(_NOT_WINDOWS)
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY_PATH, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, name)
        except FileNotFoundError:
            pass


class _LastInputInfo(ctypes.Structure):
    _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]


def windows_idle_seconds() -> float | None:
    """Seconds since the last input from ``GetLastInputInfo``; None off Windows or on failure."""
    if sys.platform != "win32":
        return None
    try:
        user32 = ctypes.WinDLL("user32")
        kernel32 = ctypes.WinDLL("kernel32")
        info = _LastInputInfo(cbSize=ctypes.sizeof(_LastInputInfo))
        if not user32.GetLastInputInfo(ctypes.byref(info)):
            return None
        kernel32.GetTickCount.restype = ctypes.c_uint
        return idle_from_ticks(kernel32.GetTickCount(), info.dwTime)
    except Exception:  # noqa: BLE001 - a probe never raises
        return None


class WindowsBackend:
    """Windows: Run-key start at login, idle from GetLastInputInfo, battery from psutil."""

    name = "windows"
    autostart_supported = True

    def __init__(self, *, run_key: RunKey | None = None, idle: IdleProbe = windows_idle_seconds, battery: BatteryProbe = psutil_on_battery) -> None:
        self._run_key: RunKey = WinregRunKey() if run_key is None else run_key
        self._idle = idle
        self._battery = battery

    def idle_seconds(self) -> float | None:
        """Seconds since the last input, or None."""
        return self._idle()

    def on_battery(self) -> bool | None:
        """The psutil answer, or None."""
        return self._battery()

    def autostart_enabled(self) -> bool:
        """Whether our Run value exists; False when the registry cannot be read."""
        try:
            return self._run_key.read(RUN_VALUE_NAME) is not None
        except OSError:
            return False

    def set_autostart(self, enabled: bool, command: Sequence[str]) -> None:
        """Write or delete our Run value; raises :class:`ConfigError` on a bad command or registry failure."""
        try:
            if enabled:
                self._run_key.write(RUN_VALUE_NAME, run_key_value(command))
            else:
                self._run_key.delete(RUN_VALUE_NAME)
        except OSError as err:
            raise autostart_failed(rf"HKCU\{RUN_KEY_PATH}\{RUN_VALUE_NAME}", err) from err
