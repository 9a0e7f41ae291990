"""Backend selection, the fallback, the shared probes, and portability of the app's policy modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

import app.platform.base as base
from app.platform import FallbackBackend, PlatformBackend, current_backend
from app.platform.base import battery_from_psutil, checked_command, psutil_on_battery, run_quietly
from app.platform.linux import LinuxBackend
from app.platform.macos import MacOSBackend
from app.platform.windows import WindowsBackend
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
PURE_MODULES = [ROOT / "app" / "settings.py", ROOT / "app" / "policy.py", *sorted((ROOT / "app" / "platform").glob("*.py"))]
OS_SPECIFIC = {"fcntl", "pwd", "grp", "termios", "tty", "pty", "resource", "posix", "uvloop", "winreg", "msvcrt", "_winapi", "winsound"}


@pytest.mark.parametrize(
    ("platform", "kind"),
    [("linux", LinuxBackend), ("linux2", LinuxBackend), ("darwin", MacOSBackend), ("win32", WindowsBackend), ("cygwin", WindowsBackend), ("freebsd14", FallbackBackend), ("", FallbackBackend)],
)
def test_current_backend_selects_by_platform(platform: str, kind: type) -> None:
    backend = current_backend(platform)
    assert isinstance(backend, kind) and isinstance(backend, PlatformBackend)
    assert isinstance(backend.name, str) and backend.name


def test_current_backend_for_this_machine_answers_without_raising() -> None:
    backend = current_backend()
    idle, battery = backend.idle_seconds(), backend.on_battery()
    assert idle is None or idle >= 0
    assert battery in (None, True, False)
    assert backend.autostart_enabled() in (True, False)


def test_a_backend_that_fails_to_start_gives_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: object, **kwargs: object) -> None:
        raise RuntimeError("no desktop here")

    monkeypatch.setattr(LinuxBackend, "__init__", explode)
    assert isinstance(current_backend("linux"), FallbackBackend)


def test_the_fallback_knows_nothing_and_refuses_autostart() -> None:
    backend = FallbackBackend(name="plan9", battery=lambda: True)
    assert (backend.idle_seconds(), backend.on_battery(), backend.autostart_enabled(), backend.autostart_supported) == (None, True, False, False)
    backend.set_autostart(False, ["/bin/butterfly"])
    with pytest.raises(ConfigError, match="plan9") as err:
        backend.set_autostart(True, ["/bin/butterfly"])
    assert err.value.hint


Battery = namedtuple("Battery", "percent secsleft power_plugged")


@pytest.mark.parametrize(("battery", "expected"), [(None, None), (Battery(50, 100, True), False), (Battery(50, 100, False), True), (Battery(50, 100, None), None)])
def test_battery_from_psutil(battery: object, expected: bool | None) -> None:
    assert battery_from_psutil(battery) is expected


def test_psutil_on_battery_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    assert psutil_on_battery() in (None, True, False)

    def broken() -> None:
        raise OSError("no /sys")

    monkeypatch.setattr(psutil, "sensors_battery", broken)
    assert psutil_on_battery() is None


def test_run_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_quietly([sys.executable, "-c", "print('ok')"]) == "ok\n"
    assert run_quietly([sys.executable, "-c", "import sys; sys.exit(3)"]) is None
    assert run_quietly(["butterfly-no-such-program-anywhere"]) is None
    monkeypatch.setattr(base, "PROBE_TIMEOUT_S", 0.2)
    assert run_quietly([sys.executable, "-c", "import time; time.sleep(5)"]) is None


@pytest.mark.parametrize("command", [[], "/bin/x", [""], ["/bin/x", 3], ["/bin/x", "a\0"], ["/bin/\udcff"]])
def test_checked_command_rejects_what_no_os_can_store(command: object) -> None:
    with pytest.raises(ConfigError):
        checked_command(command)  # type: ignore[arg-type]


def test_policy_modules_import_neither_torch_nor_qt() -> None:
    code = "import app.settings, app.policy, app.platform, sys; print('torch' in sys.modules, any(m.startswith('PySide6') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_os_specific_module_is_imported_at_module_level(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_level = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    inside_functions = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    names = set()
    for node in module_level:
        if id(node) in inside_functions:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif node.module:
            names.add(node.module.split(".")[0])
    assert not names & OS_SPECIFIC, f"{path.name} imports {sorted(names & OS_SPECIFIC)} at module level"
