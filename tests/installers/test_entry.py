"""The frozen entry point's choice of what to run for a command line."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.conftest import ROOT


def load_entry() -> ModuleType:
    spec = importlib.util.spec_from_file_location("butterfly_frozen_entry", ROOT / "installers" / "entry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


entry = load_entry()
Launch = entry.Launch
plan = entry.plan_launch
LINUX_EXE = "/opt/butterfly-pool/butterfly"


@pytest.mark.parametrize(
    ("argv", "executable", "expected"),
    [
        (["--version"], LINUX_EXE, Launch("cli", ("--version",))),
        (["coordinator", "--port", "0"], LINUX_EXE, Launch("cli", ("coordinator", "--port", "0"))),
        ([], LINUX_EXE, Launch("cli", ())),  # the parser says a command is needed
        (["-m", "cli", "app"], LINUX_EXE, Launch("cli", ("app",))),  # the login item's command
        (["-m", "cli.__main__", "demo"], LINUX_EXE, Launch("cli", ("demo",))),
        (["-m", "app.worker"], LINUX_EXE, Launch("app.worker", ())),  # the compute process
        (["-m", "os", "x"], LINUX_EXE, Launch("cli", ("-m", "os", "x"))),  # not ours: left to the parser
        (["-m"], LINUX_EXE, Launch("cli", ("-m",))),
        ([], "/Applications/Butterfly.app/Contents/MacOS/butterfly", Launch("cli", ("app",))),
        (["-psn_0_12345"], "/Applications/Butterfly.app/Contents/MacOS/butterfly", Launch("cli", ("app",))),
        (["status"], "/Applications/Butterfly.app/Contents/MacOS/butterfly", Launch("cli", ("status",))),
        ([], r"C:\Program Files\Butterfly\butterfly-app.exe", Launch("cli", ("app",))),
        ([], r"C:\Program Files\Butterfly\butterfly.exe", Launch("cli", ())),
    ],
)
def test_plan_launch(argv: list[str], executable: str, expected: object) -> None:
    assert plan(argv, executable=executable) == expected


def test_a_module_runs_as_main_with_its_arguments(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["butterfly", "-m", "cli", "--version"])
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("butterfly ")
