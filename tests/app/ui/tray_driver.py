"""Drives the real tray app on an X display for the end-to-end test (run as a script, not collected).

Prints one JSON object per line on stdout (``started``, ``found``, ``serving``, ``shots``,
``bye``, or ``failed``) and reads commands on stdin (``screenshot``, ``quit``). It starts
the app as ``butterfly app`` does, waits for the pool named on the command line to be
discovered, joins it through the rebuilt tray menu (accepting the consent dialog like a
user), measures the GUI's event-loop latency with a 10 ms timer while the compute
process loads its layers, and takes screenshots with one real click on the tray icon.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402 - the start-up clock must start before any import
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from PySide6.QtCore import QObject, QPointF, QRect, QRectF, Qt, QTimer, Signal  # noqa: E402
from PySide6.QtGui import QColor, QFont, QLinearGradient, QPainter, QPaintEvent, QRadialGradient  # noqa: E402
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget  # noqa: E402

from app.agent import AgentConfig  # noqa: E402
from app.status import Activity  # noqa: E402
from app.ui.icons import app_icon  # noqa: E402
from app.ui.join_dialogs import ConsentDialog  # noqa: E402
from app.ui.main import start_tray  # noqa: E402

IMPORT = "/usr/bin/import"
CONVERT = "/usr/bin/convert"


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Wallpaper(QWidget):
    """A plain desktop background, so screenshots look like a desktop rather than a black X screen."""

    def __init__(self, geometry: QRect) -> None:
        super().__init__(None, Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnBottomHint)
        self.setGeometry(geometry)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        g = QLinearGradient(QPointF(0, 0), QPointF(self.width(), self.height()))
        g.setColorAt(0, QColor("#1e2a4a"))
        g.setColorAt(1, QColor("#3a2f6b"))
        p.fillRect(self.rect(), g)
        glow = QRadialGradient(QPointF(self.width() * 0.75, self.height() * 0.8), self.width() * 0.5)
        glow.setColorAt(0, QColor(32, 182, 217, 70))
        glow.setColorAt(1, QColor(32, 182, 217, 0))
        p.fillRect(self.rect(), glow)
        p.fillRect(QRectF(0, 0, self.width(), 32), QColor(18, 20, 32, 235))
        p.setPen(QColor("#e5e7eb"))
        font = QFont(self.font())
        font.setPointSizeF(10)
        p.setFont(font)
        p.drawText(QRectF(14, 0, 300, 32), Qt.AlignmentFlag.AlignVCenter, "Activities")
        p.drawText(QRectF(0, 0, self.width(), 32), Qt.AlignmentFlag.AlignCenter, time.strftime("%a %H:%M"))


class Stdin(QObject):
    line = Signal(str)

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in sys.stdin:
            self.line.emit(raw.strip())
        self.line.emit("quit")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool-id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, required=True)
    args = parser.parse_args()
    args.artifacts.mkdir(parents=True, exist_ok=True)

    app = QApplication(sys.argv[:1])
    app.setApplicationName("Butterfly")
    app.setQuitOnLastWindowClosed(False)
    app.setWindowIcon(app_icon())
    config = AgentConfig(data_dir=args.data_dir, settings_path=args.settings, name="tray-e2e",
                         mdns_interfaces=("127.0.0.1",), rejoin_last_pool=False, policy_interval_s=1.0)
    bridge, controller = start_tray(config, use_tray=QSystemTrayIcon.isSystemTrayAvailable())
    screen = app.primaryScreen().geometry()
    state: dict[str, object] = {"joined": False, "serving": False, "gaps": [], "last_tick": None, "measuring": False}

    def tick() -> None:
        now = time.perf_counter()
        last = state["last_tick"]
        if last is not None and state["measuring"]:
            state["gaps"].append(now - last)  # type: ignore[union-attr]
        state["last_tick"] = now

    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.timeout.connect(tick)
    ticker.start(10)

    def started() -> None:
        emit("started", startup_s=time.perf_counter() - STARTED, tray=controller.tray is not None,
             torch_loaded="torch" in sys.modules)

    def accept_consent() -> None:
        dialog = controller.dialog
        if isinstance(dialog, ConsentDialog):
            dialog.grab().save(str(args.artifacts / "consent-dialog.png"))
            dialog.join_button.click()
            state["measuring"] = True  # from the moment Join is clicked until the layers are served
            state["last_tick"] = None
        else:
            QTimer.singleShot(50, accept_consent)

    def watch() -> None:
        status = bridge.latest
        if not state["joined"]:
            pool = next((p for p in status.discovered if p.pool_id == args.pool_id), None)
            if pool is None:
                return
            try:
                action = controller.find_action(f"Join {pool.name}")
            except KeyError:
                return  # the menu is rebuilt on the next status
            state["joined"] = True
            emit("found", label=action.text(), ws_url=pool.ws_url)
            QTimer.singleShot(100, accept_consent)
            action.trigger()  # opens the consent dialog (modal) like a click would
        elif not state["serving"] and status.activity is Activity.SERVING:
            state["serving"] = True
            gaps = state["gaps"]
            emit("serving", layers=[str(s) for s in status.layers], max_gap_ms=1000 * max(gaps, default=0.0),
                 ticks=len(gaps), detail=status.detail)  # type: ignore[arg-type]
            state["measuring"] = False
        elif status.activity is Activity.ERROR:
            emit("failed", detail=status.detail, log=list(status.log[-20:]))

    watcher = QTimer()
    watcher.timeout.connect(watch)
    watcher.start(50)

    wallpaper = Wallpaper(screen)

    def screenshot() -> None:
        wallpaper.show()
        window = controller.open_status_window()
        window.move(48, 72)
        QTimer.singleShot(1200, click_tray)

    def click_tray() -> None:
        for window_id in subprocess.run(["xdotool", "search", "--class", "trayer"], capture_output=True, text=True, timeout=5).stdout.split():
            subprocess.run(["xdotool", "windowraise", window_id], capture_output=True, timeout=5)  # the panel above the wallpaper
        window = controller.status_window
        assert window is not None
        window.grab().save(str(args.artifacts / "status-window.png"))
        geometry = controller.tray.geometry() if controller.tray is not None else QRect()
        x, y = geometry.center().x(), geometry.center().y()
        subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", "3"], capture_output=True, timeout=5)
        QTimer.singleShot(900, lambda: capture(geometry))

    def capture(tray_geometry: QRect) -> None:
        menu = controller.menu
        visible = menu.isVisible()
        menu_geometry = menu.geometry()
        desktop = args.artifacts / "desktop.png"
        subprocess.run([IMPORT, "-window", "root", str(desktop)], capture_output=True, timeout=20)
        region = menu_geometry.united(tray_geometry).adjusted(-24, -8, 24, 24).intersected(screen)
        crop = args.artifacts / "tray-menu.png"
        subprocess.run([CONVERT, str(desktop), "-crop", f"{region.width()}x{region.height()}+{region.x()}+{region.y()}", "+repage", str(crop)],
                       capture_output=True, timeout=20)
        menu.hide()
        emit("shots", menu_visible=visible, menu=[menu_geometry.x(), menu_geometry.y(), menu_geometry.width(), menu_geometry.height()],
             tray=[tray_geometry.x(), tray_geometry.y(), tray_geometry.width(), tray_geometry.height()],
             files=sorted(p.name for p in args.artifacts.glob("*.png")))

    def on_command(line: str) -> None:
        if line == "screenshot":
            screenshot()
        elif line == "quit":
            bridge.stopped.connect(lambda: emit("bye"))
            controller.quit()

    stdin = Stdin()
    stdin.line.connect(on_command)
    stdin.start()
    QTimer.singleShot(0, started)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
