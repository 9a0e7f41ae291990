"""The backend for systems Butterfly has no specific support for: battery through psutil, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import ConfigError

from app.platform.base import BatteryProbe, psutil_on_battery


class FallbackBackend:
    """Idle time unknown, battery via psutil, no start at login; never raises from a probe."""

    autostart_supported = False

    def __init__(self, *, name: str = "fallback", battery: BatteryProbe = psutil_on_battery) -> None:
        self.name = name
        self._battery = battery

    def idle_seconds(self) -> float | None:
        """Always None: this system has no supported way to read the idle time."""
        return None

    def on_battery(self) -> bool | None:
        """The psutil answer, or None."""
        return self._battery()

    def autostart_enabled(self) -> bool:
        """Always False: starting at login is not supported here."""
        return False

    def set_autostart(self, enabled: bool, command: Sequence[str]) -> None:
        """Turning it off is a no-op; turning it on raises :class:`ConfigError`."""
        if enabled:
            raise ConfigError(f"starting at login is not supported on {self.name}", hint="start Butterfly yourself, or add it to your system's startup programs")
