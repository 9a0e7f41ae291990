"""The tray icon in each state, drawn from ``assets/butterfly.svg`` with a status badge.

- idle: the butterfly alone;
- working: the butterfly with a green dot;
- paused: a faded butterfly with an amber pause badge;
- error: the butterfly with a red "!" badge;
- disconnected: a faded butterfly with a grey badge crossed out.

When the SVG asset is missing (an unusual install) the wings are drawn with plain
shapes, so the tray never goes blank.
"""

from __future__ import annotations

from functools import cache
from typing import Final

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QLinearGradient, QPainter, QPen, QPixmap
from PySide6.QtSvg import QSvgRenderer

from app.ui.menu_model import IconState
from core.resources import asset_path

ASSET: Final = asset_path("butterfly.svg")
SIZES: Final = (16, 22, 24, 32, 48, 64, 128)

BADGE_COLORS: Final = {
    IconState.WORKING: QColor("#22c55e"),
    IconState.PAUSED: QColor("#f59e0b"),
    IconState.ERROR: QColor("#ef4444"),
    IconState.DISCONNECTED: QColor("#6b7280"),
}
_FADED: Final = frozenset({IconState.PAUSED, IconState.DISCONNECTED})


def render(state: IconState, size: int) -> QPixmap:
    """The icon for ``state`` as a ``size``×``size`` pixmap with a transparent background."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setOpacity(0.45 if state in _FADED else 1.0)
    _draw_butterfly(painter, QRectF(0, 0, size, size))
    painter.setOpacity(1.0)
    color = BADGE_COLORS.get(state)
    if color is not None:
        _draw_badge(painter, state, color, size)
    painter.end()
    return pixmap


@cache
def icon(state: IconState) -> QIcon:
    """The icon for ``state`` at every tray size (cached)."""
    result = QIcon()
    for size in SIZES:
        result.addPixmap(render(state, size))
    return result


@cache
def app_icon() -> QIcon:
    """The plain butterfly, for windows and dialogs."""
    return icon(IconState.IDLE)


@cache
def _renderer() -> QSvgRenderer | None:
    renderer = QSvgRenderer(str(ASSET)) if ASSET.is_file() else None
    return renderer if renderer is not None and renderer.isValid() else None


def _draw_butterfly(painter: QPainter, rect: QRectF) -> None:
    renderer = _renderer()
    if renderer is not None:
        renderer.render(painter, rect)
        return
    s = rect.width() / 256.0
    gradient = QLinearGradient(QPointF(0, 0), QPointF(rect.width(), rect.height()))
    gradient.setColorAt(0, QColor("#7c5cff"))
    gradient.setColorAt(1, QColor("#20b6d9"))
    painter.setBrush(QBrush(gradient))
    painter.setPen(QPen(QColor("#1d1646"), max(1.0, 6 * s)))
    for x in (22, 140):
        painter.drawEllipse(QRectF(x * s, 44 * s, 94 * s, 92 * s))
        painter.drawEllipse(QRectF((x + 16) * s, 130 * s, 70 * s, 80 * s))
    painter.setBrush(QColor("#1d1646"))
    painter.drawRoundedRect(QRectF(121 * s, 92 * s, 14 * s, 110 * s), 7 * s, 7 * s)


def _draw_badge(painter: QPainter, state: IconState, color: QColor, size: int) -> None:
    diameter = max(6.0, size * 0.46)
    rect = QRectF(size - diameter - 0.5, size - diameter - 0.5, diameter, diameter)
    painter.setPen(QPen(QColor("white"), max(1.0, size / 24)))
    painter.setBrush(color)
    painter.drawEllipse(rect)
    if size < 20:
        return
    mark = QPen(QColor("white"), max(1.5, diameter / 7), Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap)
    painter.setPen(mark)
    c = rect.center()
    r = diameter * 0.22
    if state is IconState.PAUSED:
        painter.drawLine(QPointF(c.x() - r * 0.55, c.y() - r), QPointF(c.x() - r * 0.55, c.y() + r))
        painter.drawLine(QPointF(c.x() + r * 0.55, c.y() - r), QPointF(c.x() + r * 0.55, c.y() + r))
    elif state is IconState.ERROR:
        painter.drawLine(QPointF(c.x(), c.y() - r * 1.1), QPointF(c.x(), c.y() + r * 0.25))
        painter.drawPoint(QPointF(c.x(), c.y() + r * 1.05))
    elif state is IconState.DISCONNECTED:
        painter.drawLine(QPointF(c.x() - r, c.y() - r), QPointF(c.x() + r, c.y() + r))
        painter.drawLine(QPointF(c.x() - r, c.y() + r), QPointF(c.x() + r, c.y() - r))
