"""The dialogs, driven like a user would (off-screen): consent, invite, settings, hosting, status."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QDialog

from app.discovery import DiscoveredPool
from app.settings import Settings, WeeklySchedule, load_settings, save_settings
from app.status import Activity, AgentStatus, Hosting, HostingPhase, LayerSpan, MachineSummary, PoolRef
from app.ui.host_dialog import HostDialog, InviteShareDialog
from app.ui.join_dialogs import ConsentDialog, InviteDialog, PoolFacts, grouped_fingerprint
from app.ui.settings_dialog import SettingsDialog
from app.ui.status_window import StatusWindow
from core.discovery import PoolAdvert
from core.identity import Identity, create_invite, invite_link
from core.types import PoolId

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "dialogs"
POOL = Identity.generate()


def save(widget, name: str) -> None:  # noqa: ANN001
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    widget.grab().save(str(ARTIFACTS / f"{name}.png"))


def lab_pool() -> DiscoveredPool:
    advert = PoolAdvert(pool_id=PoolId(POOL.fingerprint), pool_name="Lab pool", model="SmolLM2-135M-Instruct",
                        invite_required=False, volunteers=2, layers=30, model_mib=514, needed_mib=120)
    return DiscoveredPool("Lab._butterfly._tcp.local.", advert, "192.168.1.20", 8765)


def test_consent_says_who_what_and_that_prompts_pass_through(qtbot) -> None:  # noqa: ANN001 - pytest-qt fixture
    dialog = ConsentDialog(PoolFacts.from_discovered(lab_pool()), Settings(memory_cap_gib=2.0))
    qtbot.addWidget(dialog)
    dialog.show()
    text = " ".join(label.text() for label in dialog.findChildren(type(dialog.wants_label)))
    for expected in ("Lab pool", grouped_fingerprint(POOL.fingerprint), "SmolLM2-135M-Instruct", "30 layers", "514 MiB",
                     "192.168.1.20:8765", "at most 2.0 GiB", "120 MiB", "Prompts pass through this machine"):
        assert expected in text, expected
    save(dialog, "consent")
    qtbot.mouseClick(dialog.join_button, Qt.MouseButton.LeftButton)
    assert dialog.result() == QDialog.DialogCode.Accepted


def test_consent_can_be_declined(qtbot) -> None:  # noqa: ANN001
    dialog = ConsentDialog(PoolFacts.from_discovered(lab_pool()), Settings())
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.reject()
    assert dialog.result() == QDialog.DialogCode.Rejected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not an invite", "malformed invite"),
        ("bfinv1.e30.AAAA", "malformed invite"),
    ],
)
def test_a_bad_invite_gets_a_clear_message_and_no_join(qtbot, text: str, message: str) -> None:  # noqa: ANN001
    dialog = InviteDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.continue_button.isEnabled()
    dialog.editor.setPlainText(text)
    qtbot.mouseClick(dialog.continue_button, Qt.MouseButton.LeftButton)
    assert dialog.error_label.isVisible()
    assert message in dialog.error_label.text()
    assert "again" in dialog.error_label.text() or "host" in dialog.error_label.text()
    assert dialog.result() != QDialog.DialogCode.Accepted and dialog.target is None
    save(dialog, "invite-error")
    dialog.editor.setPlainText("x")
    assert not dialog.error_label.isVisible(), "editing clears the old message"


def test_an_expired_invite_is_refused_in_the_dialog(qtbot) -> None:  # noqa: ANN001
    token = create_invite(POOL, pool_name="Old", addresses=["ws://10.0.0.2:8765/ws"], ttl_s=10, max_uses=None, now=time.time() - 60)
    dialog = InviteDialog()
    qtbot.addWidget(dialog)
    dialog.editor.setPlainText(token)
    dialog.continue_button.click()
    assert "expired" in dialog.error_label.text()


def test_a_good_invite_link_is_accepted_with_its_target(qtbot) -> None:  # noqa: ANN001
    token = create_invite(POOL, pool_name="Lab", addresses=["ws://10.0.0.2:8765/ws"], ttl_s=600, max_uses=1, now=time.time())
    dialog = InviteDialog()
    qtbot.addWidget(dialog)
    dialog.editor.setPlainText(invite_link(token))
    dialog.continue_button.click()
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.target is not None and dialog.target.invite == token and dialog.target.expected_pool_id == POOL.fingerprint
    facts = PoolFacts.from_invite(dialog.target, dialog.invite)  # type: ignore[arg-type]
    consent = ConsentDialog(facts, Settings())
    qtbot.addWidget(consent)
    assert "Invite valid until" in " ".join(label.text() for label in consent.findChildren(type(consent.wants_label)))


def test_settings_dialog_edits_what_is_saved_and_loaded(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    original = Settings(schedule=WeeklySchedule.from_ranges({0: [(540, 1020)]}))
    dialog = SettingsDialog(original, devices=("cpu", "cuda:0"), autostart_supported=True)
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.day_edits[0].text() == "09:00-17:00" and dialog.schedule_check.isChecked()
    dialog.threads_spin.setValue(3)
    dialog.memory_check.setChecked(True)
    dialog.memory_spin.setValue(6.5)
    dialog.device_checks["cuda:0"].setChecked(False)
    dialog.idle_check.setChecked(True)
    dialog.idle_spin.setValue(12)
    dialog.battery_check.setChecked(False)
    dialog.day_edits[5].setText("10:00-12:00, 14:00-16:00")
    dialog.login_check.setChecked(True)
    save(dialog, "settings")
    dialog.save_button.click()
    assert dialog.result() == QDialog.DialogCode.Accepted
    result = dialog.settings()
    assert (result.cpu_threads, result.memory_cap_gib, result.only_when_idle, result.idle_minutes) == (3, 6.5, True, 12)
    assert not result.pause_on_battery and result.start_at_login
    assert not result.device_enabled("cuda:0") and result.device_enabled("cpu")
    assert result.schedule.days[5][1].start == 14 * 60
    save_settings(result, tmp_path / "settings.json")
    assert load_settings(tmp_path / "settings.json") == result


@pytest.mark.parametrize(("day_text", "words"), [("9 to 5", "Monday"), ("", "no time at all")])
def test_settings_dialog_refuses_a_bad_schedule(qtbot, day_text: str, words: str) -> None:  # noqa: ANN001
    dialog = SettingsDialog(Settings(), autostart_supported=False)
    qtbot.addWidget(dialog)
    assert not dialog.login_check.isEnabled()
    dialog.schedule_check.setChecked(True)
    dialog.day_edits[0].setText(day_text)
    dialog.save_button.click()
    assert dialog.result() != QDialog.DialogCode.Accepted
    assert words in dialog.error_label.text()
    assert dialog.settings() == Settings()


def test_host_dialog_builds_a_request_and_checks_the_model(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    dialog = HostDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.path_edit.isEnabled()
    dialog.hf_radio.setChecked(True)
    assert dialog.path_edit.isEnabled()
    dialog.path_edit.setText(str(tmp_path))
    dialog.start_button.click()
    assert "config.json" in dialog.error_label.text() and dialog.request is None
    (tmp_path / "config.json").write_text("{}")
    dialog.name_edit.setText("Lab")
    dialog.share_check.setChecked(True)
    dialog.open_check.setChecked(True)
    dialog.port_spin.setValue(9100)
    save(dialog, "host")
    dialog.start_button.click()
    assert dialog.result() == QDialog.DialogCode.Accepted
    request = dialog.request
    assert request is not None
    assert (request.model, request.pool_name, request.port, request.share_on_network, request.open_pool) == (str(tmp_path), "Lab", 9100, True, True)


def test_host_dialog_default_model(qtbot) -> None:  # noqa: ANN001
    dialog = HostDialog()
    qtbot.addWidget(dialog)
    dialog.start_button.click()
    assert dialog.request is not None and dialog.request.model == "default"


def test_invite_share_dialog_copies_the_invite_and_its_link(qtbot) -> None:  # noqa: ANN001
    token = create_invite(POOL, pool_name="Mine", addresses=["ws://127.0.0.1:8765/ws"], ttl_s=600, max_uses=None, now=time.time())
    dialog = InviteShareDialog(Hosting(HostingPhase.RUNNING, "Mine", "default", url="http://127.0.0.1:8765", invite=token))
    qtbot.addWidget(dialog)
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == token
    dialog.copy_link_button.click()
    assert QGuiApplication.clipboard().text() == invite_link(token)
    assert dialog.copy_link_button.text() == "Copied ✓"


def test_status_window_shows_the_work_and_copies_diagnostics(qtbot) -> None:  # noqa: ANN001
    window = StatusWindow()
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.wants_machine, timeout=1000):
        window.show()
    status = AgentStatus(
        activity=Activity.SERVING, detail="Serving layers 1–15 of 30 for Lab",
        pool=PoolRef(POOL.fingerprint, "Lab", "ws://10.0.0.2:8765/ws", "SmolLM2"), layers=(LayerSpan(0, 15, 30),),
        steps_served=1234, tokens_per_s=14.2, throughput=tuple(float(i % 17) for i in range(90)), uptime_s=3725,
        machine=MachineSummary("Ryzen 7", 8, 16, 32 << 30, "cpu", "Linux 6.1", seconds_per_layer=0.0011, threads=8, memory_offered_bytes=8 << 30),
        log=("10:00:00 joining Lab", "10:00:02 connected"),
    )
    window.show_status(status)
    assert window.layers_label.text() == "1–15 of 30"
    assert window.steps_label.text() == "1,234"
    assert window.uptime_label.text() == "1 h 02 min"
    assert "Ryzen 7" in window.cpu_label.text() and "1.10 ms" in window.bench_label.text()
    assert window.log_view.toPlainText().endswith("connected")
    save(window, "status")
    window.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert "activity: serving" in copied and POOL.fingerprint in copied and "10:00:02 connected" in copied
