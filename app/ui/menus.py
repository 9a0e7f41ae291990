"""Qt widgets from a :class:`~app.ui.menu_model.MenuModel`: a QMenu for the tray, buttons for the fallback window."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtGui import QAction, QFont
from PySide6.QtWidgets import QMenu, QPushButton, QVBoxLayout, QWidget

from app.ui.menu_model import MenuAction, MenuItem, MenuModel

Dispatch = Callable[[MenuAction], None]


def build_qmenu(model: MenuModel, dispatch: Dispatch, parent: QWidget | None = None) -> QMenu:
    """A new QMenu showing ``model``; triggering an item calls ``dispatch(item.action)``."""
    menu = QMenu(parent)
    menu.setToolTipsVisible(True)
    _fill(menu, model.items, dispatch)
    if menu.actions():
        first = menu.actions()[0]
        font = QFont(first.font())
        font.setBold(True)
        first.setFont(font)
    return menu


def _fill(menu: QMenu, items: tuple[MenuItem, ...], dispatch: Dispatch) -> None:
    for item in items:
        if item.separator:
            menu.addSeparator()
        elif item.children:
            submenu = menu.addMenu(item.label)
            submenu.setToolTipsVisible(True)
            submenu.setEnabled(item.enabled)
            _fill(submenu, item.children, dispatch)
        else:
            action = QAction(item.label, menu)
            action.setEnabled(item.enabled and item.action is not None)
            if item.tooltip:
                action.setToolTip(item.tooltip)
            if item.action is not None:
                target = item.action
                action.triggered.connect(lambda _checked=False, a=target: dispatch(a))
            menu.addAction(action)


def find_action(menu: QMenu, *labels: str) -> QAction:
    """The QAction reached by following ``labels`` (label prefixes) through submenus; KeyError if none."""
    current = menu
    for depth, label in enumerate(labels):
        match = next((a for a in current.actions() if a.text().startswith(label)), None)
        if match is None:
            raise KeyError(f"no menu item starting with {label!r} among {[a.text() for a in current.actions() if a.text()]}")
        if depth == len(labels) - 1:
            return match
        submenu = match.menu()
        if submenu is None:
            raise KeyError(f"{match.text()!r} has no submenu")
        current = submenu
    raise KeyError("no labels given")


def fill_buttons(layout: QVBoxLayout, model: MenuModel, dispatch: Dispatch, parent: QWidget) -> list[QPushButton]:
    """Buttons for every actionable top-level item (submenus become buttons with a menu); returns them."""
    buttons = []
    for item in model.items:
        if item.separator or (item.action is None and not item.children):
            continue
        button = QPushButton(item.label, parent)
        button.setEnabled(item.enabled)
        if item.tooltip:
            button.setToolTip(item.tooltip)
        if item.children:
            submenu = QMenu(button)
            _fill(submenu, item.children, dispatch)
            button.setMenu(submenu)
        elif item.action is not None:
            target = item.action
            button.clicked.connect(lambda _checked=False, a=target: dispatch(a))
        layout.addWidget(button)
        buttons.append(button)
    return buttons
