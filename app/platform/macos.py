"""macOS: a per-user LaunchAgent for start at login, idle time from ``ioreg``, battery from psutil.

The LaunchAgent ``~/Library/LaunchAgents/org.butterfly.agent.plist`` has ``RunAtLoad``, so
launchd starts the app when the user logs in to the GUI; it is not loaded at once (the
app asking for it is already running). Idle time is the ``HIDIdleTime`` property of
``IOHIDSystem`` in nanoseconds, read from ``ioreg -c IOHIDSystem``.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from app.platform.base import BatteryProbe, CommandRunner, autostart_failed, checked_command, psutil_on_battery, run_quietly
from app.settings import write_atomically

LAUNCH_AGENT_LABEL: Final = "org.butterfly.agent"
IOREG_COMMAND: Final = ("ioreg", "-c", "IOHIDSystem")
_NS_PER_S: Final = 1e9
_IDLE_NUMBER = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')
_IDLE_DATA = re.compile(r'"HIDIdleTime"\s*=\s*<([0-9a-fA-F]{2,16})>')


def launch_agent_path(home: Path) -> Path:
    """Where the per-user LaunchAgent lives under ``home``."""
    return home / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT_LABEL}.plist"


def launch_agent_plist(command: Sequence[str]) -> dict[str, Any]:
    """The LaunchAgent property list that runs ``command`` once at GUI login.

    Raises :class:`ConfigError` for an empty command or NUL characters.
    """
    return {
        "Label": LAUNCH_AGENT_LABEL,
        "ProgramArguments": checked_command(command),
        "RunAtLoad": True,
        "KeepAlive": False,
        "LimitLoadToSessionType": "Aqua",
        "ProcessType": "Interactive",
    }


def parse_ioreg_idle(text: str) -> float | None:
    """Idle seconds from ``ioreg -c IOHIDSystem`` output; None when ``HIDIdleTime`` is absent or garbled.

    The first ``HIDIdleTime`` wins; it is a number of nanoseconds, or on some
    machines raw little-endian bytes such as ``<f05b3a0000000000>``.
    """
    if match := _IDLE_NUMBER.search(text):
        return int(match.group(1)) / _NS_PER_S
    if (match := _IDLE_DATA.search(text)) and len(match.group(1)) % 2 == 0:
        return int.from_bytes(bytes.fromhex(match.group(1)), "little") / _NS_PER_S
    return None


class MacOSBackend:
    """macOS: LaunchAgent start at login, idle from ioreg, battery from psutil."""

    name = "macos"
    autostart_supported = True

    def __init__(self, *, home: Path | None = None, run: CommandRunner = run_quietly, battery: BatteryProbe = psutil_on_battery) -> None:
        self._home = Path.home() if home is None else home
        self._run = run
        self._battery = battery

    @property
    def autostart_path(self) -> Path:
        """Where the LaunchAgent lives for this user."""
        return launch_agent_path(self._home)

    def idle_seconds(self) -> float | None:
        """Seconds since the last input from ``ioreg``, or None. Never raises."""
        try:
            out = self._run(IOREG_COMMAND)
            return parse_ioreg_idle(out) if out is not None else None
        except Exception:  # noqa: BLE001 - a probe never raises
            return None

    def on_battery(self) -> bool | None:
        """The psutil answer, or None."""
        return self._battery()

    def autostart_enabled(self) -> bool:
        """Whether our LaunchAgent exists, parses, and has ``RunAtLoad`` and is not ``Disabled``."""
        try:
            with self.autostart_path.open("rb") as f:
                plist = plistlib.load(f)
        except (OSError, plistlib.InvalidFileException, ValueError):
            return False
        return isinstance(plist, dict) and plist.get("RunAtLoad") is True and plist.get("Disabled") is not True

    def set_autostart(self, enabled: bool, command: Sequence[str]) -> None:
        """Write (atomically) or remove the LaunchAgent; raises :class:`ConfigError` on failure."""
        path = self.autostart_path
        try:
            if enabled:
                data = plistlib.dumps(launch_agent_plist(command), fmt=plistlib.FMT_XML)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, data)
            else:
                path.unlink(missing_ok=True)
        except OSError as err:
            raise autostart_failed(path, err) from err
