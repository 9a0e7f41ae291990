"""Platform backends behind one interface: idle time, battery and start at login per OS.

:func:`current_backend` picks the backend for this machine and never raises; the pure
pieces (file formats, quoting, output parsers) live in the backend modules as plain
functions so they are tested on every OS.
"""

from __future__ import annotations

import logging
import sys

from app.platform.base import PlatformBackend
from app.platform.fallback import FallbackBackend

__all__ = ["FallbackBackend", "PlatformBackend", "current_backend"]

log = logging.getLogger(__name__)


def current_backend(platform: str | None = None) -> PlatformBackend:
    """The backend for ``platform`` (default ``sys.platform``): Linux, macOS, Windows, else the fallback.

    Never raises: a backend that fails to come up is logged and replaced by the fallback.
    """
    platform = sys.platform if platform is None else platform
    try:
        if platform.startswith("linux"):
            from app.platform.linux import LinuxBackend

            return LinuxBackend()
        if platform == "darwin":
            from app.platform.macos import MacOSBackend

            return MacOSBackend()
        if platform in ("win32", "cygwin"):
            from app.platform.windows import WindowsBackend

            return WindowsBackend()
    except Exception:  # noqa: BLE001 - never fail the app over a missing platform feature
        log.warning("platform backend for %s failed to start; using the fallback", platform, exc_info=True)
    return FallbackBackend(name=platform or "fallback")
