"""The tray controller over a stand-in agent: no tray means the fallback window; clicks become commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, QTimer, Signal

from app.commands import Command, Join, JoinTarget, Pause, Snooze
from app.discovery import DiscoveredPool
from app.settings import Settings
from app.status import Activity, AgentStatus, PoolRef
from app.ui.join_dialogs import ConsentDialog
from app.ui.main import no_tray_reason
from app.ui.menu_model import ConfirmJoin, OpenMap
from app.ui.tray import TrayController
from core.discovery import PoolAdvert
from core.identity import Identity
from core.types import PoolId

ROOT = Path(__file__).resolve().parents[3]
POOL_ID = PoolId(Identity.generate().fingerprint)


class FakeBridge(QObject):
    status_changed = Signal(object)
    stopped = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.latest = AgentStatus()
        self.sent: list[Command] = []
        self.status_changed.connect(lambda s: setattr(self, "latest", s))

    def send(self, command: Command) -> None:
        self.sent.append(command)

    def settings(self) -> Settings:
        return Settings()

    def shutdown(self) -> None:
        self.stopped.emit()


def lab() -> DiscoveredPool:
    advert = PoolAdvert(pool_id=POOL_ID, pool_name="Lab", model="tiny", invite_required=False, volunteers=1)
    return DiscoveredPool("Lab._butterfly._tcp.local.", advert, "10.0.0.2", 8765)


@pytest.fixture
def controller(qtbot):  # noqa: ANN001, ANN201
    opened: list[str] = []
    bridge = FakeBridge()
    tray = TrayController(bridge, use_tray=False, no_tray_reason="Your desktop has no system tray (test)", open_url=opened.append)
    tray.show()
    assert tray.window is not None
    qtbot.addWidget(tray.window)
    tray.opened = opened  # type: ignore[attr-defined]
    return tray


def button(tray: TrayController, prefix: str):  # noqa: ANN201
    assert tray.window is not None
    return next(b for b in tray.window.buttons if b.text().startswith(prefix))


def test_without_a_tray_the_window_says_why_and_offers_the_menu(controller: TrayController) -> None:
    window = controller.window
    assert window is not None and window.isVisible()
    assert window.reason_label.text() == "Your desktop has no system tray (test)"
    labels = [b.text() for b in window.buttons]
    assert labels[:2] == ["Join with invite…", "Pause"] and "Quit Butterfly" in labels
    assert not button(controller, "Pause").isEnabled()


def test_window_follows_the_status_and_sends_commands(controller: TrayController, qtbot) -> None:  # noqa: ANN001
    bridge = controller.bridge
    serving = AgentStatus(activity=Activity.SERVING, detail="Serving layers 1–6 of 6 for Lab",
                          pool=PoolRef(POOL_ID, "Lab", "ws://10.0.0.2:8765/ws"), discovered=(lab(),))
    bridge.status_changed.emit(serving)
    window = controller.window
    assert window is not None
    assert window.headline_label.text() == "Serving"
    assert window.detail_label.text() == serving.detail
    button(controller, "Pause").click()
    snooze = button(controller, "Snooze").menu()
    snooze.actions()[1].trigger()
    assert bridge.sent == [Pause(), Snooze("1h")]
    button(controller, "Open cluster map").click()
    assert controller.opened == ["http://10.0.0.2:8765/"]  # type: ignore[attr-defined]


def test_joining_a_discovered_pool_asks_for_consent_first(controller: TrayController, qtbot) -> None:  # noqa: ANN001
    pool = lab()
    seen: list[ConsentDialog] = []

    def answer(accept: bool) -> None:
        dialog = controller.dialog
        if not isinstance(dialog, ConsentDialog):
            QTimer.singleShot(20, lambda: answer(accept))
            return
        seen.append(dialog)
        if accept:
            dialog.join_button.click()
        else:
            dialog.reject()

    QTimer.singleShot(20, lambda: answer(False))
    controller.dispatch(ConfirmJoin(pool))
    assert controller.bridge.sent == []
    QTimer.singleShot(20, lambda: answer(True))
    controller.dispatch(ConfirmJoin(pool))
    assert len(seen) == 2 and controller.dialog is None
    assert controller.bridge.sent == [Join(JoinTarget.from_discovered(pool))]


def test_status_window_opens_once(controller: TrayController) -> None:
    first = controller.open_status_window()
    assert controller.open_status_window() is first and first.isVisible()
    controller.dispatch(OpenMap("http://x/"))
    assert controller.opened[-1] == "http://x/"  # type: ignore[attr-defined]
    first.close()


@pytest.mark.parametrize(
    ("env", "platform", "words"),
    [
        ({"XDG_CURRENT_DESKTOP": "GNOME", "DISPLAY": ":0"}, "linux", "GNOME needs the AppIndicator extension"),
        ({"XDG_CURRENT_DESKTOP": "ubuntu:GNOME", "WAYLAND_DISPLAY": "w"}, "linux", "AppIndicator"),
        ({"DISPLAY": ":0"}, "linux", "no system tray"),
        ({}, "linux", "--headless"),
        ({}, "darwin", "not available"),
    ],
)
def test_no_tray_reason(env: dict[str, str], platform: str, words: str) -> None:
    assert words in no_tray_reason(env, platform)


def test_tray_process_starts_fast_without_torch(tmp_path: Path) -> None:
    code = (
        "import time; t = time.perf_counter()\n"
        "import sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from app.agent import AgentConfig\n"
        "from app.ui.bridge import AgentBridge\n"
        "from app.ui.tray import TrayController\n"
        "app = QApplication([])\n"
        f"bridge = AgentBridge(AgentConfig(data_dir=__import__('pathlib').Path({str(tmp_path)!r}), discovery=False))\n"
        "tray = TrayController(bridge); tray.show(); app.processEvents()\n"
        "print(time.perf_counter() - t, 'torch' in sys.modules, 'numpy' in sys.modules)\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    elapsed, torch_loaded, numpy_loaded = result.stdout.split()
    assert torch_loaded == "False" and numpy_loaded == "False"
    assert float(elapsed) < 1.0, f"the tray took {float(elapsed):.2f} s to start"

