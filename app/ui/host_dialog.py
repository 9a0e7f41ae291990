"""Hosting a pool: choose the model and how others may join, then share the invite."""

from __future__ import annotations

import html
import platform

from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtCore import QUrl
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.hosting import HostRequest, ModelKind, check_model_source
from app.status import Hosting
from app.ui.icons import app_icon
from core.errors import ConfigError
from core.identity import invite_link


def default_pool_name() -> str:
    """A friendly default name: the machine's name, e.g. ``"studio pool"``."""
    node = platform.node().split(".")[0].strip()
    return f"{node} pool"[:63] if node else "Butterfly pool"


class HostDialog(QDialog):
    """"Host a pool…": the model (built-in default, a Hugging Face folder or a GGUF file), name and access.

    After :meth:`exec` returns Accepted, :attr:`request` holds the validated request.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Host a pool")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(520)
        self.request: HostRequest | None = None
        layout = QVBoxLayout(self)
        intro = QLabel("Run a coordinator on this machine. Volunteers who join split the model's layers between them; "
                       "this machine only relays and samples, so it needs the model file but little compute.")
        intro.setWordWrap(True)
        layout.addWidget(intro)

        form = QFormLayout()
        self.default_radio = QRadioButton("Built-in model (SmolLM2-135M-Instruct)")
        self.hf_radio = QRadioButton("A Hugging Face model folder")
        self.gguf_radio = QRadioButton("A GGUF file")
        self.default_radio.setChecked(True)
        self._kinds = QButtonGroup(self)
        for radio in (self.default_radio, self.hf_radio, self.gguf_radio):
            self._kinds.addButton(radio)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("choose a folder or file")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse_button)
        models = QVBoxLayout()
        for radio in (self.default_radio, self.hf_radio, self.gguf_radio):
            models.addWidget(radio)
        models.addLayout(path_row)
        form.addRow("Model", models)

        self.name_edit = QLineEdit(default_pool_name())
        self.name_edit.setMaxLength(63)
        form.addRow("Pool name", self.name_edit)
        self.port_spin = QSpinBox()
        self.port_spin.setRange(1024, 65535)
        self.port_spin.setValue(8765)
        form.addRow("Port", self.port_spin)
        self.share_check = QCheckBox("Let machines on my network find it and join")
        self.open_check = QCheckBox("Anyone who finds it may join without an invite")
        form.addRow("", self.share_check)
        form.addRow("", self.open_check)
        layout.addLayout(form)

        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b91c1c;")
        self.error_label.hide()
        layout.addWidget(self.error_label)

        buttons = QDialogButtonBox()
        self.start_button = buttons.addButton("Start hosting", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._check_and_accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self._kinds.buttonToggled.connect(lambda *_: self._sync_path_row())
        self._sync_path_row()

    def kind(self) -> ModelKind:
        """The model source chosen."""
        if self.hf_radio.isChecked():
            return "hf"
        if self.gguf_radio.isChecked():
            return "gguf"
        return "default"

    def _sync_path_row(self) -> None:
        custom = self.kind() != "default"
        self.path_edit.setEnabled(custom)
        self.browse_button.setEnabled(custom)

    def _browse(self) -> None:
        if self.kind() == "hf":
            chosen = QFileDialog.getExistingDirectory(self, "Choose a Hugging Face model folder")
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF file", filter="GGUF models (*.gguf)")
        if chosen:
            self.path_edit.setText(chosen)

    def _check_and_accept(self) -> None:
        try:
            model = check_model_source(self.kind(), self.path_edit.text())
            self.request = HostRequest(
                model=model,
                pool_name=self.name_edit.text(),
                port=self.port_spin.value(),
                share_on_network=self.share_check.isChecked(),
                open_pool=self.open_check.isChecked(),
            )
        except ConfigError as exc:
            self.error_label.setText(exc.message + (f" — {exc.hint}" if exc.hint else ""))
            self.error_label.show()
            self.adjustSize()
            return
        self.accept()


class InviteShareDialog(QDialog):
    """The hosted pool's invite, with buttons to copy it (or its link) and open the cluster map."""

    def __init__(self, hosting: Hosting, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Invite to {hosting.pool_name}")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(520)
        self.hosting = hosting
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"<h3 style='margin:0'>“{html.escape(hosting.pool_name)}” is running</h3>"))
        where = QLabel(f"Clients and the cluster map: <a href='{html.escape(hosting.url)}'>{html.escape(hosting.url)}</a>")
        where.setOpenExternalLinks(True)
        layout.addWidget(where)
        layout.addWidget(QLabel("Give volunteers this invite (Butterfly › Join with invite…):"))
        self.invite_view = QPlainTextEdit(hosting.invite)
        self.invite_view.setReadOnly(True)
        self.invite_view.setFixedHeight(96)
        layout.addWidget(self.invite_view)
        row = QHBoxLayout()
        self.copy_button = QPushButton("Copy invite")
        self.copy_link_button = QPushButton("Copy link")
        self.map_button = QPushButton("Open cluster map")
        self.copy_button.clicked.connect(lambda: self._copy(hosting.invite, self.copy_button))
        self.copy_link_button.clicked.connect(lambda: self._copy(invite_link(hosting.invite), self.copy_link_button))
        self.map_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl(hosting.url)))
        for button in (self.copy_button, self.copy_link_button, self.map_button):
            row.addWidget(button)
        row.addStretch(1)
        layout.addLayout(row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _copy(self, text: str, button: QPushButton) -> None:
        QGuiApplication.clipboard().setText(text)
        button.setText("Copied ✓")
