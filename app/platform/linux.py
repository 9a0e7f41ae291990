"""Linux: XDG autostart entry, idle time from the desktop, battery from psutil.

Start at login is a desktop entry ``butterfly.desktop`` in ``$XDG_CONFIG_HOME/autostart``
(``~/.config/autostart`` when unset), as the XDG Autostart specification says; its
``Exec`` line is quoted per the Desktop Entry specification (:func:`desktop_entry`).

Idle time, in order: on Wayland, GNOME's Mutter idle monitor over ``gdbus`` (X11 idle
counters only see X clients there, so they are not trusted); on X11, ``xprintidle`` when
installed, else the X screensaver extension through ctypes when libX11 and libXss are
present; otherwise unknown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from core.errors import ConfigError

from app.platform.base import BatteryProbe, CommandRunner, IdleProbe, autostart_failed, checked_command, psutil_on_battery, run_quietly
from app.settings import write_atomically

AUTOSTART_FILE_NAME: Final = "butterfly.desktop"
APP_NAME: Final = "Butterfly"
APP_COMMENT: Final = "Lend this computer to a Butterfly pool"

EXEC_RESERVED: Final = frozenset(" \t\n\"'\\><~|&;$*?#()`")
"""Characters that force an ``Exec`` argument into double quotes (Desktop Entry spec, "The Exec key")."""
_EXEC_ESCAPED_IN_QUOTES: Final = frozenset('"`$\\')
_STRING_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNREPRESENTABLE: Final = frozenset(chr(c) for c in (*range(32), 127)) - set(_STRING_ESCAPES)
"""ASCII control characters, which a desktop-entry string value cannot hold even escaped."""

MUTTER_IDLE_COMMAND: Final = (
    "gdbus", "call", "--session",
    "--dest", "org.gnome.Mutter.IdleMonitor",
    "--object-path", "/org/gnome/Mutter/IdleMonitor/Core",
    "--method", "org.gnome.Mutter.IdleMonitor.GetIdletime",
)


def autostart_dir(env: Mapping[str, str], home: Path) -> Path:
    """The XDG autostart folder: ``$XDG_CONFIG_HOME/autostart``, or ``~/.config/autostart``.

    As the XDG Base Directory spec requires, an unset, empty or relative
    ``XDG_CONFIG_HOME`` is ignored.
    """
    config_home = env.get("XDG_CONFIG_HOME", "")
    base = Path(config_home) if config_home and os.path.isabs(config_home) else home / ".config"
    return base / "autostart"


def quote_exec_arg(arg: str) -> str:
    """One argument of an ``Exec`` value, before the string-value escaping of :func:`escape_string_value`.

    ``%`` becomes ``%%`` (a literal percent, not a field code); an empty argument or one
    holding a reserved character is put in double quotes, inside which ``"``, `````,
    ``$`` and ``\\`` get a backslash.
    """
    escaped = arg.replace("%", "%%")
    if arg and not any(c in EXEC_RESERVED for c in arg):
        return escaped
    inner = "".join("\\" + c if c in _EXEC_ESCAPED_IN_QUOTES else c for c in escaped)
    return f'"{inner}"'


def escape_string_value(value: str) -> str:
    """A value of type string in a desktop entry: backslash, newline, tab and carriage return escaped."""
    return "".join(_STRING_ESCAPES.get(c, c) for c in value)


def desktop_entry(command: Sequence[str], *, name: str = APP_NAME, comment: str = APP_COMMENT) -> str:
    """The text of an autostart desktop entry that runs ``command`` (program, then arguments).

    Raises :class:`ConfigError` for an empty command or ASCII control characters other
    than tab, newline and carriage return (which are escaped).
    """
    args = checked_command(command)
    for arg in args:
        if any(c in _UNREPRESENTABLE for c in arg):
            raise ConfigError(f"start-at-login argument {arg!r} holds a control character", hint="desktop entries cannot store control characters; use a path without them")
    exec_value = escape_string_value(" ".join(quote_exec_arg(a) for a in args))
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Version=1.5\n"
        f"Name={escape_string_value(name)}\n"
        f"Comment={escape_string_value(comment)}\n"
        f"Exec={exec_value}\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def desktop_entry_enabled(text: str) -> bool:
    """Whether an autostart entry is active: not ``Hidden=true`` nor ``X-GNOME-Autostart-enabled=false``."""
    lines = {line.strip().replace(" ", "") for line in text.splitlines()}
    return "Hidden=true" not in lines and "X-GNOME-Autostart-enabled=false" not in lines


def parse_xprintidle(text: str) -> float | None:
    """Seconds from ``xprintidle`` output (milliseconds on one line); None when it is not a number."""
    text = text.strip()
    return int(text) / 1000.0 if text.isascii() and text.isdigit() else None


def parse_mutter_idletime(text: str) -> float | None:
    """Seconds from the reply of Mutter's ``GetIdletime`` as ``gdbus`` prints it, e.g. ``(uint64 1234,)``."""
    match = re.fullmatch(r"\(\s*(?:uint64\s+)?(\d+)\s*,?\s*\)", text.strip())
    return int(match.group(1)) / 1000.0 if match else None


def is_wayland(env: Mapping[str, str]) -> bool:
    """Whether the session is a Wayland session."""
    return bool(env.get("WAYLAND_DISPLAY")) or env.get("XDG_SESSION_TYPE", "").lower() == "wayland"


class LinuxBackend:
    """Linux desktops: XDG autostart, idle from Mutter / xprintidle / XScreenSaver, battery from psutil."""

    name = "linux"
    autostart_supported = True

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        run: CommandRunner = run_quietly,
        which: Callable[[str], str | None] = shutil.which,
        battery: BatteryProbe = psutil_on_battery,
        x11_idle: IdleProbe | None = None,
    ) -> None:
        self._env = os.environ if env is None else env
        self._home = Path.home() if home is None else home
        self._run = run
        self._which = which
        self._battery = battery
        self._x11_idle = x11_idle_seconds if x11_idle is None else x11_idle

    @property
    def autostart_path(self) -> Path:
        """Where the autostart entry lives for this user."""
        return autostart_dir(self._env, self._home) / AUTOSTART_FILE_NAME

    def idle_seconds(self) -> float | None:
        """Seconds since the last input, or None when this desktop does not tell us. Never raises."""
        try:
            if is_wayland(self._env):
                if self._which("gdbus"):
                    out = self._run(MUTTER_IDLE_COMMAND)
                    return parse_mutter_idletime(out) if out is not None else None
                return None
            if not self._env.get("DISPLAY"):
                return None
            if self._which("xprintidle"):
                out = self._run(["xprintidle"])
                if out is not None and (seconds := parse_xprintidle(out)) is not None:
                    return seconds
            return self._x11_idle()
        except Exception:  # noqa: BLE001 - a probe never raises
            return None

    def on_battery(self) -> bool | None:
        """The psutil answer, or None."""
        return self._battery()

    def autostart_enabled(self) -> bool:
        """Whether the autostart entry exists and is not disabled."""
        try:
            return desktop_entry_enabled(self.autostart_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return False

    def set_autostart(self, enabled: bool, command: Sequence[str]) -> None:
        """Write (atomically) or remove the autostart entry; raises :class:`ConfigError` on failure."""
        path = self.autostart_path
        try:
            if enabled:
                text = desktop_entry(command)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, text.encode("utf-8"))
            else:
                path.unlink(missing_ok=True)
        except OSError as err:
            raise autostart_failed(path, err) from err


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),
        ("event_mask", ctypes.c_ulong),
    ]


@functools.cache
def _x11_libraries() -> tuple[Any, Any] | None:
    x11_name, xss_name = ctypes.util.find_library("X11"), ctypes.util.find_library("Xss")
    if not x11_name or not xss_name:
        return None
    x11, xss = ctypes.CDLL(x11_name), ctypes.CDLL(xss_name)
    x11.XOpenDisplay.argtypes, x11.XOpenDisplay.restype = [ctypes.c_char_p], ctypes.c_void_p
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x11.XDefaultRootWindow.argtypes, x11.XDefaultRootWindow.restype = [ctypes.c_void_p], ctypes.c_ulong
    x11.XFree.argtypes = [ctypes.c_void_p]
    xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XScreenSaverInfo)
    xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_XScreenSaverInfo)]
    return x11, xss


def x11_idle_seconds() -> float | None:
    """Idle seconds from the X screensaver extension, when libX11, libXss and a display are there; else None."""
    try:
        libraries = _x11_libraries()
        if libraries is None:
            return None
        x11, xss = libraries
        display = x11.XOpenDisplay(None)
        if not display:
            return None
        try:
            info = xss.XScreenSaverAllocInfo()
            if not info:
                return None
            try:
                if not xss.XScreenSaverQueryInfo(display, x11.XDefaultRootWindow(display), info):
                    return None
                return float(info.contents.idle) / 1000.0
            finally:
                x11.XFree(info)
        finally:
            x11.XCloseDisplay(display)
    except Exception:  # noqa: BLE001 - a probe never raises
        return None
