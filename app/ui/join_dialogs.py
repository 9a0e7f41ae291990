"""Joining a pool: the consent dialog, and the dialog that reads a pasted invite.

The consent dialog says, before anything connects, who the pool is (its name and the
fingerprint of its key, which the app pins), what it runs and may ask of this machine,
and that prompts pass through it. Joining happens only through its Join button.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.commands import JoinTarget, read_invite
from app.discovery import DiscoveredPool
from app.settings import Settings
from app.status import format_bytes
from app.ui.icons import app_icon
from core.errors import ButterflyError
from core.identity import Invite


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """What the consent dialog shows about a pool; unknown numbers are 0."""

    name: str
    pool_id: str
    model: str
    address: str
    layers: int = 0
    model_mib: int = 0
    needed_mib: int = 0
    volunteers: int = -1
    expires_at: float | None = None

    @classmethod
    def from_discovered(cls, pool: DiscoveredPool) -> PoolFacts:
        """Facts from a pool's mDNS advert."""
        a = pool.advert
        return cls(a.pool_name, a.pool_id, a.model, f"{pool.host}:{pool.port}", a.layers, a.model_mib, a.needed_mib, a.volunteers)

    @classmethod
    def from_invite(cls, target: JoinTarget, invite: Invite) -> PoolFacts:
        """Facts from an invite (it names no model or sizes)."""
        return cls(invite.pool_name, invite.pool_id, target.model, target.url, expires_at=invite.expires_at)


def grouped_fingerprint(pool_id: str) -> str:
    """A pool id in groups of four characters, easier to compare by eye: ``bf1x yz12 …``."""
    return " ".join(pool_id[i : i + 4] for i in range(0, len(pool_id), 4))


def memory_offer(settings: Settings) -> str:
    """How much memory this machine offers, in words, from the settings."""
    if settings.memory_cap_gib is None:
        return "up to half of the memory free when it joins (set a cap in Settings)"
    return f"at most {format_bytes(int(settings.memory_cap_gib * 2**30))} of memory (your cap in Settings)"


class ConsentDialog(QDialog):
    """"Join this pool?" with everything the user should know first; accepted only by Join."""

    def __init__(self, facts: PoolFacts, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.facts = facts
        self.setWindowTitle(f"Join {facts.name}?")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(480)
        layout = QVBoxLayout(self)
        layout.setSpacing(10)

        title = QLabel(f"<h3 style='margin:0'>Join “{html.escape(facts.name)}”?</h3>")
        layout.addWidget(title)

        rows = [("Model", html.escape(facts.model or "named by the pool after you join"))]
        sizes = []
        if facts.layers:
            sizes.append(f"{facts.layers} layers")
        if facts.model_mib:
            sizes.append(f"{format_bytes(facts.model_mib << 20)} of weights")
        if sizes:
            rows[0] = ("Model", rows[0][1] + f" <span style='color:#6b7280'>({', '.join(sizes)})</span>")
        rows.append(("Pool key", f"<tt>{html.escape(grouped_fingerprint(facts.pool_id))}</tt>"))
        rows.append(("Address", html.escape(facts.address)))
        if facts.volunteers >= 0:
            rows.append(("Volunteers", str(facts.volunteers)))
        if facts.expires_at is not None:
            rows.append(("Invite valid until", time.strftime("%Y-%m-%d %H:%M", time.localtime(facts.expires_at))))
        table = "".join(
            f"<tr><td style='color:#6b7280;padding-right:14px'>{k}</td><td>{v}</td></tr>" for k, v in rows
        )
        details = QLabel(f"<table cellspacing='0' cellpadding='2'>{table}</table>")
        details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(details)

        wants = ["The pool picks which layers this machine runs once it has measured it; "
                 f"this machine offers {html.escape(memory_offer(settings))}."]
        if facts.needed_mib:
            wants.append(f"The pool still lacks about {format_bytes(facts.needed_mib << 20)} of memory to hold the whole model.")
        self.wants_label = QLabel(" ".join(wants))
        self.wants_label.setWordWrap(True)
        layout.addWidget(self.wants_label)

        warning = QLabel(
            "<b>Prompts pass through this machine.</b> The text people send to this pool is processed by "
            "the layers you run. Join only pools you trust. Butterfly never runs code from a pool — "
            "it receives weights and numbers only — and the pool's key is remembered, so an impostor is refused."
        )
        warning.setWordWrap(True)
        warning.setFrameShape(QFrame.Shape.StyledPanel)
        warning.setStyleSheet("QLabel { background: #fff7e6; border: 1px solid #f5c16c; border-radius: 6px; padding: 8px; color: #4a3200; }")
        layout.addWidget(warning)

        buttons = QDialogButtonBox()
        self.join_button = buttons.addButton("Join", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.join_button.setDefault(True)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)


class InviteDialog(QDialog):
    """Paste an invite token or ``butterfly://`` link; a bad one gets a clear message, not a join.

    After :meth:`exec` returns Accepted, :attr:`target` and :attr:`invite` hold what it named.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Join with an invite")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(460)
        self.target: JoinTarget | None = None
        self.invite: Invite | None = None
        layout = QVBoxLayout(self)
        intro = QLabel("Paste the invite the host gave you — a token starting with <tt>bfinv1.</tt> or a <tt>butterfly://join</tt> link.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText("bfinv1.…")
        self.editor.setFixedHeight(90)
        layout.addWidget(self.editor)
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b91c1c;")
        self.error_label.hide()
        layout.addWidget(self.error_label)
        buttons = QDialogButtonBox()
        self.continue_button: QPushButton = buttons.addButton("Continue…", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.continue_button.setEnabled(False)
        self.editor.textChanged.connect(self._on_text_changed)
        buttons.accepted.connect(self._check_and_accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _on_text_changed(self) -> None:
        self.continue_button.setEnabled(bool(self.editor.toPlainText().strip()))
        self.error_label.hide()

    def _check_and_accept(self) -> None:
        try:
            self.target, self.invite = read_invite(self.editor.toPlainText(), now=time.time())
        except ButterflyError as exc:
            self.error_label.setText(exc.message + (f" — {exc.hint}" if exc.hint else ""))
            self.error_label.show()
            self.adjustSize()
            return
        self.accept()
