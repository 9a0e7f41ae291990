"""Status…: what this machine does for its pool, how fast, what it is, and the log."""

from __future__ import annotations

import html
import platform

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.status import AgentStatus, diagnostics_text, format_bytes, format_duration
from app.ui.graph import ThroughputGraph
from app.ui.icons import icon
from app.ui.menu_model import headline, icon_state

APP_VERSION = "0.1.0"


class StatusWindow(QWidget):
    """A window that mirrors one :class:`AgentStatus` at a time; call :meth:`show_status` with each new one.

    ``wants_machine`` is emitted when it is shown and this machine has not been measured yet.
    """

    wants_machine = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Butterfly status")
        self.setWindowIcon(icon(icon_state(AgentStatus())))
        self.resize(560, 680)
        self._status = AgentStatus()
        self._shown_log: tuple[str, ...] = ()
        layout = QVBoxLayout(self)
        layout.setSpacing(10)

        header = QHBoxLayout()
        self.icon_label = QLabel()
        self.icon_label.setFixedSize(48, 48)
        header.addWidget(self.icon_label)
        titles = QVBoxLayout()
        self.headline_label = QLabel()
        self.headline_label.setStyleSheet("font-size: 16pt; font-weight: 600;")
        self.detail_label = QLabel()
        self.detail_label.setWordWrap(True)
        self.detail_label.setStyleSheet("color: #4b5563;")
        titles.addWidget(self.headline_label)
        titles.addWidget(self.detail_label)
        header.addLayout(titles, 1)
        layout.addLayout(header)

        work = QGroupBox("This machine's work")
        work_form = QFormLayout(work)
        self.pool_label = QLabel()
        self.layers_label = QLabel()
        self.steps_label = QLabel()
        self.rate_label = QLabel()
        self.uptime_label = QLabel()
        for name, label in (("Pool", self.pool_label), ("Layers", self.layers_label), ("Tokens served", self.steps_label),
                            ("Throughput", self.rate_label), ("Connected for", self.uptime_label)):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            work_form.addRow(name, label)
        layout.addWidget(work)
        self.graph = ThroughputGraph()
        layout.addWidget(self.graph)

        machine = QGroupBox("This machine")
        machine_form = QFormLayout(machine)
        self.cpu_label = QLabel()
        self.memory_label = QLabel()
        self.bench_label = QLabel()
        self.bench_label.setWordWrap(True)
        for name, label in (("Processor", self.cpu_label), ("Memory", self.memory_label), ("Benchmark", self.bench_label)):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            machine_form.addRow(name, label)
        layout.addWidget(machine)

        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(500)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log_view.setMinimumHeight(120)
        layout.addWidget(self.log_view, 1)

        buttons = QHBoxLayout()
        self.copy_button = QPushButton("Copy diagnostics")
        self.copy_button.clicked.connect(self.copy_diagnostics)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons.addWidget(self.copy_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self.show_status(self._status)

    def show_status(self, status: AgentStatus) -> None:
        """Draw ``status``."""
        self._status = status
        self.icon_label.setPixmap(icon(icon_state(status)).pixmap(48, 48))
        self.headline_label.setText(headline(status))
        self.detail_label.setText(status.detail)
        pool = status.pool
        self.pool_label.setText(
            f"{html.escape(pool.name or 'unnamed')} <span style='color:#6b7280'>({html.escape(pool.pool_id[:12])}…)</span>"
            + (f" — {html.escape(pool.model)}" if pool.model else "")
            if pool is not None else "not in a pool"
        )
        self.layers_label.setText(", ".join(str(s) for s in status.layers) if status.layers else "none yet")
        self.steps_label.setText(f"{status.steps_served:,}")
        self.rate_label.setText(f"{status.tokens_per_s:.1f} tokens/s")
        self.uptime_label.setText(format_duration(status.uptime_s) if status.uptime_s else "—")
        self.graph.set_samples(status.throughput)
        m = status.machine
        if m is None:
            self.cpu_label.setText("measuring…")
            self.memory_label.setText("—")
            self.bench_label.setText("—")
        else:
            self.cpu_label.setText(f"{m.cpu_model} — {m.physical_cores} cores / {m.logical_cores} threads, {m.accelerator.upper()}")
            self.memory_label.setText(f"{format_bytes(m.total_memory_bytes)} total; offering {format_bytes(m.memory_offered_bytes)}")
            lines = [f"{m.seconds_per_layer * 1000:.2f} ms per reference layer (quick check, {m.threads} threads)"]
            lines += [f"{b.architecture} {b.dtype} on {b.device}: {b.seconds_per_layer * 1000:.2f} ms/layer" for b in m.benchmarks[-3:]]
            self.bench_label.setText("\n".join(lines))
        if status.log != self._shown_log:
            self._shown_log = status.log
            scrollbar = self.log_view.verticalScrollBar()
            at_end = scrollbar.value() >= scrollbar.maximum() - 2
            self.log_view.setPlainText("\n".join(status.log))
            if at_end:
                scrollbar.setValue(scrollbar.maximum())

    def copy_diagnostics(self) -> None:
        """Put a plain-text report of the current status on the clipboard."""
        text = diagnostics_text(self._status, app_version=APP_VERSION, platform=f"{platform.system()} {platform.release()}")
        QGuiApplication.clipboard().setText(text)
        self.copy_button.setText("Copied ✓")

    def showEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt's name
        super().showEvent(event)
        if self._status.machine is None:
            self.wants_machine.emit()
