"""Settings…: what this machine gives (threads, memory, devices) and when (idle, battery, schedule, login)."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.schedule_text import format_day, parse_day
from app.settings import MAX_CPU_THREADS, MAX_IDLE_MINUTES, Settings, WeeklySchedule
from app.ui.icons import app_icon
from core.errors import ConfigError

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class SettingsDialog(QDialog):
    """Edits a :class:`~app.settings.Settings`; after Save, :meth:`settings` returns the new value.

    ``devices`` lists the devices this machine has (e.g. ``("cpu", "cuda:0")``);
    ``autostart_supported`` says whether start at login works on this system.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        devices: tuple[str, ...] = ("cpu",),
        autostart_supported: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Butterfly settings")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(520)
        self._original = settings
        self._result: Settings | None = None
        layout = QVBoxLayout(self)

        resources = QGroupBox("What this machine gives")
        form = QFormLayout(resources)
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, min(MAX_CPU_THREADS, 1024))
        self.threads_spin.setSpecialValueText("All cores")
        self.threads_spin.setValue(settings.cpu_threads)
        form.addRow("CPU threads", self.threads_spin)
        self.memory_check = QCheckBox("Limit to")
        self.memory_spin = QDoubleSpinBox()
        self.memory_spin.setRange(0.25, 4096.0)
        self.memory_spin.setDecimals(2)
        self.memory_spin.setSingleStep(0.5)
        self.memory_spin.setSuffix(" GiB")
        self.memory_check.setChecked(settings.memory_cap_gib is not None)
        self.memory_spin.setValue(settings.memory_cap_gib if settings.memory_cap_gib is not None else 4.0)
        self.memory_spin.setEnabled(self.memory_check.isChecked())
        self.memory_check.toggled.connect(self.memory_spin.setEnabled)
        memory_row = QHBoxLayout()
        memory_row.addWidget(self.memory_check)
        memory_row.addWidget(self.memory_spin)
        memory_row.addStretch(1)
        form.addRow("Memory", memory_row)
        self.device_checks: dict[str, QCheckBox] = {}
        device_row = QHBoxLayout()
        for device in dict.fromkeys((*devices, *(d for d, _ in settings.devices))):
            check = QCheckBox(device)
            check.setChecked(settings.device_enabled(device))
            self.device_checks[device] = check
            device_row.addWidget(check)
        device_row.addStretch(1)
        form.addRow("Devices", device_row)
        layout.addWidget(resources)

        when = QGroupBox("When to compute")
        when_form = QFormLayout(when)
        self.idle_check = QCheckBox("Only when this computer is idle for")
        self.idle_spin = QSpinBox()
        self.idle_spin.setRange(1, MAX_IDLE_MINUTES)
        self.idle_spin.setSuffix(" min")
        self.idle_check.setChecked(settings.only_when_idle)
        self.idle_spin.setValue(settings.idle_minutes)
        idle_row = QHBoxLayout()
        idle_row.addWidget(self.idle_check)
        idle_row.addWidget(self.idle_spin)
        idle_row.addStretch(1)
        when_form.addRow(idle_row)
        self.battery_check = QCheckBox("Pause while on battery")
        self.battery_check.setChecked(settings.pause_on_battery)
        when_form.addRow(self.battery_check)
        self.schedule_check = QCheckBox("Follow a weekly schedule (times when computing is allowed)")
        self.schedule_check.setChecked(not settings.schedule.is_always)
        when_form.addRow(self.schedule_check)
        grid = QGridLayout()
        self.day_edits: list[QLineEdit] = []
        for i, day in enumerate(_DAYS):
            edit = QLineEdit(format_day(settings.schedule, i))
            edit.setPlaceholderText("e.g. 09:00-12:00, 13:00-17:00 (empty: not at all)")
            grid.addWidget(QLabel(day), i, 0)
            grid.addWidget(edit, i, 1)
            self.day_edits.append(edit)
        self._schedule_box = QWidget()
        self._schedule_box.setLayout(grid)
        self._schedule_box.setEnabled(self.schedule_check.isChecked())
        self.schedule_check.toggled.connect(self._schedule_box.setEnabled)
        when_form.addRow(self._schedule_box)
        layout.addWidget(when)

        self.login_check = QCheckBox("Start Butterfly when I log in")
        self.login_check.setChecked(settings.start_at_login)
        if not autostart_supported:
            self.login_check.setEnabled(False)
            self.login_check.setToolTip("Starting at login is not supported on this system")
        layout.addWidget(self.login_check)

        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b91c1c;")
        self.error_label.hide()
        layout.addWidget(self.error_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        self.save_button = buttons.button(QDialogButtonBox.StandardButton.Save)
        buttons.accepted.connect(self._check_and_accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def settings(self) -> Settings:
        """The settings as saved (the original ones if the dialog was cancelled)."""
        return self._result if self._result is not None else self._original

    def _read(self) -> Settings:
        schedule = WeeklySchedule()
        if self.schedule_check.isChecked():
            ranges = {}
            for i, edit in enumerate(self.day_edits):
                try:
                    ranges[i] = parse_day(edit.text())
                except ConfigError as exc:
                    raise ConfigError(f"{_DAYS[i]}: {exc.message}", hint=exc.hint) from None
            schedule = WeeklySchedule.from_ranges(ranges)
            if schedule.is_always:
                raise ConfigError("the schedule allows no time at all", hint="enter some hours, or switch the schedule off")
        settings = replace(
            self._original,
            cpu_threads=self.threads_spin.value(),
            memory_cap_gib=round(self.memory_spin.value(), 2) if self.memory_check.isChecked() else None,
            only_when_idle=self.idle_check.isChecked(),
            idle_minutes=self.idle_spin.value(),
            pause_on_battery=self.battery_check.isChecked(),
            schedule=schedule,
            start_at_login=self.login_check.isChecked(),
        )
        for device, check in self.device_checks.items():
            if check.isChecked() != settings.device_enabled(device):
                settings = settings.with_device(device, check.isChecked())
        return settings

    def _check_and_accept(self) -> None:
        try:
            self._result = self._read()
        except ConfigError as exc:
            self.error_label.setText(exc.message + (f" — {exc.hint}" if exc.hint else ""))
            self.error_label.show()
            self.adjustSize()
            return
        self.accept()
