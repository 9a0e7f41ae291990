"""A small live throughput graph drawn with QPainter: one sample per second, newest on the right."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QLinearGradient, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.status import THROUGHPUT_SAMPLES


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least ``value`` (1 for nothing)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


MIN_SPAN_S = 30
"""The graph spans at least this many seconds, then grows with the samples up to the last two minutes."""


def span_label(seconds: int) -> str:
    """The left edge's label: ``"30 s ago"``, ``"2 min ago"``."""
    return f"{seconds // 60} min ago" if seconds >= 120 else f"{seconds} s ago"


class ThroughputGraph(QWidget):
    """Tokens per second, one sample per second, over the last :data:`~app.status.THROUGHPUT_SAMPLES` seconds at most."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._samples: tuple[float, ...] = ()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(120)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(420, 130)

    def set_samples(self, samples: Sequence[float]) -> None:
        """Show ``samples`` (oldest first); repaints only when they changed."""
        new = tuple(samples[-THROUGHPUT_SAMPLES:])
        if new != self._samples:
            self._samples = new
            self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        outer = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(QPen(QColor("#d9dce3")))
        painter.setBrush(QColor("#fbfbfd"))
        painter.drawRoundedRect(outer, 8, 8)
        plot = outer.adjusted(10, 24, -10, -20)
        top = nice_ceiling(max(self._samples, default=0.0))
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        painter.setFont(small)
        grid = QPen(QColor("#e7e9ef"))
        grid.setStyle(Qt.PenStyle.DashLine)
        for i in range(4):
            y = plot.top() + plot.height() * i / 3
            painter.setPen(grid)
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(QColor("#6b7280"))
        now = self._samples[-1] if self._samples else 0.0
        painter.drawText(QRectF(outer.left() + 10, outer.top() + 4, outer.width() - 20, 18),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"tokens/s (scale {top:g})")
        painter.drawText(QRectF(outer.left() + 10, outer.top() + 4, outer.width() - 20, 18),
                         Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"now {now:.1f}")
        span = min(THROUGHPUT_SAMPLES, max(MIN_SPAN_S, len(self._samples)))
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), 16), Qt.AlignmentFlag.AlignLeft, span_label(span))
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), 16), Qt.AlignmentFlag.AlignRight, "now")
        if len(self._samples) < 2:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no work yet")
            return
        step = plot.width() / (span - 1)
        start_x = plot.right() - step * (len(self._samples) - 1)
        points = [QPointF(start_x + i * step, plot.bottom() - plot.height() * min(v, top) / top) for i, v in enumerate(self._samples)]
        area = QPainterPath(QPointF(points[0].x(), plot.bottom()))
        for p in points:
            area.lineTo(p)
        area.lineTo(QPointF(points[-1].x(), plot.bottom()))
        area.closeSubpath()
        fill = QLinearGradient(QPointF(0, plot.top()), QPointF(0, plot.bottom()))
        fill.setColorAt(0, QColor(124, 92, 255, 110))
        fill.setColorAt(1, QColor(32, 182, 217, 25))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(fill)
        painter.drawPath(area)
        line = QPainterPath(points[0])
        for p in points[1:]:
            line.lineTo(p)
        painter.setPen(QPen(QColor("#6d4dff"), 2))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(line)
