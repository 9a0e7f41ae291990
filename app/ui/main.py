"""Start the desktop app: the Qt application, the agent's thread and the tray (or its fallback window)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from app.agent import AgentConfig
from app.commands import Join, JoinTarget
from app.ui.bridge import AgentBridge
from app.ui.icons import app_icon
from app.ui.tray import TrayController


def no_tray_reason(env: Mapping[str, str], platform: str) -> str:
    """Why the desktop shows no tray icon, in words the user can act on (pure)."""
    desktop = (env.get("XDG_CURRENT_DESKTOP", "") + ":" + env.get("DESKTOP_SESSION", "")).lower()
    if platform.startswith("linux"):
        if "gnome" in desktop or "ubuntu" in desktop:
            return "Your desktop has no system tray (GNOME needs the AppIndicator extension), so Butterfly lives in this window."
        if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
            return "No desktop session was found, so Butterfly shows this window (use `butterfly app --headless` on servers)."
        return "Your desktop has no system tray, so Butterfly lives in this window."
    return "The system tray is not available, so Butterfly lives in this window."


def start_tray(config: AgentConfig, *, join: JoinTarget | None = None, use_tray: bool = True) -> tuple[AgentBridge, TrayController]:
    """Start the agent's thread and show the tray (needs a QApplication); returns both for the caller to keep."""
    bridge = AgentBridge(config)
    controller = TrayController(
        bridge, use_tray=use_tray, no_tray_reason=no_tray_reason(os.environ, sys.platform),
    )
    controller.show()
    bridge.start()
    if join is not None:
        bridge.send(Join(join))
    return bridge, controller


def run_tray(config: AgentConfig, *, join: JoinTarget | None = None, argv: Sequence[str] | None = None) -> int:
    """Run the desktop app until Quit; the process exit code."""
    app = QApplication.instance() or QApplication(list(argv) if argv is not None else sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("Butterfly")
    app.setApplicationDisplayName("Butterfly")
    app.setQuitOnLastWindowClosed(False)
    app.setWindowIcon(app_icon())
    bridge, controller = start_tray(config, join=join, use_tray=QSystemTrayIcon.isSystemTrayAvailable())
    code = app.exec()
    bridge.join(5.0)
    del controller
    return code
