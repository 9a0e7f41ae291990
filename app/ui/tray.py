"""The tray icon and everything it opens.

:class:`TrayController` listens to the agent's status signal and only draws: the icon
for the state, the tooltip, and a menu rebuilt from :func:`build_menu_model` whenever
the model changes (not while it is open). Menu actions either go to the agent as
commands or open a dialog first (consent before joining, the invite, hosting,
settings). Without a system tray it shows :class:`FallbackWindow` instead.

Importing this module loads Qt but not torch; the tray is up in well under a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, QUrl
from PySide6.QtGui import QAction, QCursor, QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QApplication, QDialog, QMenu, QSystemTrayIcon, QWidget

from app.commands import ApplySettings, Join, JoinTarget, ProbeMachine, StartHosting
from app.platform import current_backend
from app.status import AgentStatus, HostingPhase
from app.ui.bridge import AgentBridge
from app.ui.fallback_window import FallbackWindow
from app.ui.host_dialog import HostDialog, InviteShareDialog
from app.ui.icons import icon
from app.ui.join_dialogs import ConsentDialog, InviteDialog, PoolFacts
from app.ui.menu_model import (
    AskHost,
    AskInvite,
    ConfirmJoin,
    CopyInvite,
    IconState,
    MenuAction,
    MenuModel,
    OpenMap,
    Quit,
    ShowInvite,
    ShowSettings,
    ShowStatus,
    build_menu_model,
    icon_state,
    tooltip_text,
)
from app.ui.menus import build_qmenu, find_action
from app.ui.settings_dialog import SettingsDialog
from app.ui.status_window import StatusWindow

log = logging.getLogger(__name__)

QUIT_DEADLINE_MS = 15_000
"""How long Quit waits for the agent to leave politely before the app exits anyway."""


class TrayController(QObject):
    """Draws the agent's status in the tray (or the fallback window) and turns clicks into commands.

    ``no_tray_reason`` is shown in the fallback window; ``use_tray`` False forces that
    window even where a tray exists. ``open_url`` opens the cluster map (the system
    browser by default).
    """

    def __init__(
        self,
        bridge: AgentBridge,
        *,
        use_tray: bool = True,
        no_tray_reason: str = "",
        open_url: Callable[[str], object] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self._open_url = open_url or (lambda url: QDesktopServices.openUrl(QUrl(url)))
        self._status = AgentStatus()
        self._model: MenuModel | None = None
        self._pending_model: MenuModel | None = None
        self._icon_state: IconState | None = None
        self._show_invite_when_running = False
        self.status_window: StatusWindow | None = None
        self.tray: QSystemTrayIcon | None = None
        self.window: FallbackWindow | None = None
        self.menu = QMenu()
        self.dialog: QDialog | None = None
        """The dialog open right now, if any (tests drive it)."""
        if use_tray and QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(icon(IconState.IDLE), self)
            self.tray.activated.connect(self._on_activated)
            self.tray.setToolTip("Butterfly")
        else:
            self.window = FallbackWindow(no_tray_reason, self.dispatch)
        bridge.status_changed.connect(self.show_status)
        self.show_status(bridge.latest)

    def show(self) -> None:
        """Show the tray icon (or the fallback window)."""
        if self.tray is not None:
            self.tray.show()
        if self.window is not None:
            self.window.show()

    # --- drawing -------------------------------------------------------------------

    def show_status(self, status: AgentStatus) -> None:
        """Re-render everything from ``status`` (the GUI thread's only job)."""
        previous, self._status = self._status, status
        state = icon_state(status)
        if self.tray is not None:
            if state is not self._icon_state:
                self.tray.setIcon(icon(state))
            self.tray.setToolTip(tooltip_text(status))
            self._set_model(build_menu_model(status))
        self._icon_state = state
        if self.window is not None:
            self.window.show_status(status)
        if self.status_window is not None and self.status_window.isVisible():
            self.status_window.show_status(status)
        self._notify(previous, status)

    def _set_model(self, model: MenuModel) -> None:
        if model == self._model:
            return
        if self.menu.isVisible():
            self._pending_model = model
            return
        self._model = model
        old = self.menu
        self.menu = build_qmenu(model, self.dispatch)
        self.menu.aboutToHide.connect(self._after_menu_hidden)
        assert self.tray is not None
        self.tray.setContextMenu(self.menu)
        old.deleteLater()

    def _after_menu_hidden(self) -> None:
        if self._pending_model is not None:
            model, self._pending_model = self._pending_model, None
            QTimer.singleShot(0, lambda: self._set_model(model))

    def _notify(self, previous: AgentStatus, status: AgentStatus) -> None:
        hosting = status.hosting
        if hosting is not None and hosting.phase is HostingPhase.RUNNING and self._show_invite_when_running:
            self._show_invite_when_running = False
            QTimer.singleShot(0, lambda: self.dispatch(ShowInvite()))
        if self.tray is None or not QSystemTrayIcon.supportsMessages():
            return
        if status.error and status.error != previous.error:
            self.tray.showMessage("Butterfly", status.error, QSystemTrayIcon.MessageIcon.Warning, 8000)
        elif hosting is not None and hosting.phase is HostingPhase.FAILED and (previous.hosting is None or previous.hosting.phase is not HostingPhase.FAILED):
            self.tray.showMessage("Butterfly", f"Hosting failed: {hosting.error}", QSystemTrayIcon.MessageIcon.Warning, 8000)

    def find_action(self, *labels: str) -> QAction:
        """The current menu's action reached by ``labels`` (prefixes), for tests and automation."""
        return find_action(self.menu, *labels)

    # --- acting --------------------------------------------------------------------

    def dispatch(self, action: MenuAction) -> None:
        """Do what a menu item (or fallback button) asks: a dialog first, or straight to the agent."""
        if isinstance(action, ConfirmJoin):
            self._confirm_join(PoolFacts.from_discovered(action.pool), JoinTarget.from_discovered(action.pool))
        elif isinstance(action, AskInvite):
            dialog = InviteDialog(self._dialog_parent())
            if self._run_dialog(dialog) and dialog.target is not None and dialog.invite is not None:
                self._confirm_join(PoolFacts.from_invite(dialog.target, dialog.invite), dialog.target)
        elif isinstance(action, AskHost):
            dialog = HostDialog(self._dialog_parent())
            if self._run_dialog(dialog) and dialog.request is not None:
                self._show_invite_when_running = True
                self.bridge.send(StartHosting(dialog.request))
        elif isinstance(action, ShowInvite):
            if self._status.hosting is not None and self._status.hosting.invite:
                self._run_dialog(InviteShareDialog(self._status.hosting, self._dialog_parent()))
        elif isinstance(action, CopyInvite):
            if self._status.hosting is not None:
                QGuiApplication.clipboard().setText(self._status.hosting.invite)
        elif isinstance(action, OpenMap):
            self._open_url(action.url)
        elif isinstance(action, ShowStatus):
            self.open_status_window()
        elif isinstance(action, ShowSettings):
            self._edit_settings()
        elif isinstance(action, Quit):
            self.quit()
        else:
            self.bridge.send(action)

    def open_status_window(self) -> StatusWindow:
        """Show (creating on first use) and raise the status window."""
        if self.status_window is None:
            self.status_window = StatusWindow()
            self.status_window.wants_machine.connect(lambda: self.bridge.send(ProbeMachine()))
        self.status_window.show_status(self._status)
        self.status_window.show()
        self.status_window.raise_()
        self.status_window.activateWindow()
        return self.status_window

    def quit(self) -> None:
        """Leave the pool politely, stop hosting, then quit (at the latest after :data:`QUIT_DEADLINE_MS`)."""
        app = QApplication.instance()
        if self.tray is not None:
            self.tray.hide()
        if self.window is not None:
            self.window.hide()
        if self.status_window is not None:
            self.status_window.hide()
        self.bridge.stopped.connect(app.quit)
        QTimer.singleShot(QUIT_DEADLINE_MS, app.quit)
        self.bridge.shutdown()

    def _confirm_join(self, facts: PoolFacts, target: JoinTarget) -> None:
        if self._run_dialog(ConsentDialog(facts, self.bridge.settings(), self._dialog_parent())):
            self.bridge.send(Join(target))

    def _edit_settings(self) -> None:
        machine = self._status.machine
        devices = machine.devices if machine is not None else ("cpu",)
        dialog = SettingsDialog(
            self.bridge.settings(), devices=devices, autostart_supported=current_backend().autostart_supported,
            parent=self._dialog_parent(),
        )
        if self._run_dialog(dialog):
            self.bridge.send(ApplySettings(dialog.settings()))

    def _run_dialog(self, dialog: QDialog) -> bool:
        self.dialog = dialog
        try:
            return dialog.exec() == QDialog.DialogCode.Accepted
        finally:
            self.dialog = None
            dialog.deleteLater()

    def _dialog_parent(self) -> QWidget | None:
        return self.window

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason is QSystemTrayIcon.ActivationReason.Trigger:
            self.menu.popup(QCursor.pos())
        elif reason is QSystemTrayIcon.ActivationReason.DoubleClick:
            self.open_status_window()
