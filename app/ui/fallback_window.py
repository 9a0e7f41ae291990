"""The window shown instead of a tray icon when the desktop has no system tray.

It offers the same actions as the tray menu (built from the same
:class:`~app.ui.menu_model.MenuModel`) and says why there is no tray icon.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.status import AgentStatus
from app.ui.icons import icon
from app.ui.menu_model import MenuModel, build_menu_model, headline, icon_state
from app.ui.menus import Dispatch, fill_buttons


class FallbackWindow(QWidget):
    """A small always-available window: status, the reason there is no tray, and every menu action as a button."""

    def __init__(self, reason: str, dispatch: Dispatch, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Butterfly")
        self._dispatch = dispatch
        self._model: MenuModel | None = None
        self.buttons: list[QPushButton] = []
        layout = QVBoxLayout(self)
        header = QHBoxLayout()
        self.icon_label = QLabel()
        self.icon_label.setFixedSize(40, 40)
        header.addWidget(self.icon_label)
        titles = QVBoxLayout()
        self.headline_label = QLabel()
        self.headline_label.setStyleSheet("font-size: 14pt; font-weight: 600;")
        self.detail_label = QLabel()
        self.detail_label.setWordWrap(True)
        titles.addWidget(self.headline_label)
        titles.addWidget(self.detail_label)
        header.addLayout(titles, 1)
        layout.addLayout(header)
        self.reason_label = QLabel(reason)
        self.reason_label.setWordWrap(True)
        self.reason_label.setStyleSheet("color: #6b7280; font-style: italic;")
        layout.addWidget(self.reason_label)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        layout.addWidget(line)
        self._buttons_box = QVBoxLayout()
        layout.addLayout(self._buttons_box)
        layout.addStretch(1)
        self.setMinimumWidth(380)
        self.show_status(AgentStatus())

    def show_status(self, status: AgentStatus) -> None:
        """Draw ``status`` and rebuild the buttons when the menu changed."""
        self.setWindowIcon(icon(icon_state(status)))
        self.icon_label.setPixmap(icon(icon_state(status)).pixmap(40, 40))
        self.headline_label.setText(headline(status))
        self.detail_label.setText(status.detail)
        model = build_menu_model(status)
        if model == self._model:
            return
        self._model = model
        for button in self.buttons:
            self._buttons_box.removeWidget(button)
            button.hide()
            button.deleteLater()
        self.buttons = fill_buttons(self._buttons_box, model, self._dispatch, self)

    def closeEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt's name
        """Closing the window minimises it: it is the app's only handle, Quit is a button."""
        event.ignore()
        self.setWindowState(self.windowState() | Qt.WindowState.WindowMinimized)
