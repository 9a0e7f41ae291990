"""macOS backend: the LaunchAgent property list, the ioreg parser, and the agent file in a temporary home."""

from __future__ import annotations

import plistlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.platform.base import PlatformBackend
from app.platform.macos import IOREG_COMMAND, LAUNCH_AGENT_LABEL, MacOSBackend, launch_agent_path, launch_agent_plist, parse_ioreg_idle
from core.errors import ConfigError

COMMAND = ["/Applications/Butterfly.app/Contents/MacOS/Butterfly", "--data-dir", "/Users/ann/Library/Application Support/butterfly"]

IOREG_SAMPLE = """\
+-o Root  <class IORegistryEntry, id 0x100000100, retain 24>
  +-o IOResources  <class IOResources, id 0x100000110, registered, matched, active, busy 0 (0 ms), retain 55>
    +-o IOHIDSystem  <class IOHIDSystem, id 0x100000471, registered, matched, active, busy 0 (0 ms), retain 21>
      | {
      |   "HIDScrollCountMinDeltaToStart" = 30
      |   "HIDIdleTime" = 8142394500
      |   "HIDScrollCountMaxTimeDeltaBetween" = 600
      | }
"""


def test_launch_agent_plist_runs_the_command_at_login() -> None:
    plist = launch_agent_plist(COMMAND)
    assert plist["Label"] == LAUNCH_AGENT_LABEL == "org.butterfly.agent"
    assert plist["ProgramArguments"] == COMMAND and plist["RunAtLoad"] is True and plist["KeepAlive"] is False
    assert plistlib.loads(plistlib.dumps(plist)) == plist


@pytest.mark.parametrize("command", [[], [""], ["/bin/x", "a\0b"]])
def test_bad_commands_raise_config_error(command: Sequence[str]) -> None:
    with pytest.raises(ConfigError):
        launch_agent_plist(command)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (IOREG_SAMPLE, 8.1423945),
        ('      |   "HIDIdleTime" = 0\n', 0.0),
        ('"HIDIdleTime" = <00ca9a3b00000000>', 1.0),  # raw little-endian bytes: 1e9 ns
        ('"HIDIdleTime" = 5\n"HIDIdleTime" = 9', 5e-9),  # the first one wins
        ("", None),
        ('"HIDIdleTime" = <abc>', None),
        ('"HIDIdleTime" = "soon"', None),
        ("+-o IOHIDSystem  <class IOHIDSystem>", None),
    ],
)
def test_parse_ioreg_idle(text: str, seconds: float | None) -> None:
    result = parse_ioreg_idle(text)
    assert result == (pytest.approx(seconds) if seconds is not None else None)


def test_launch_agent_for_real_in_a_temporary_home(tmp_path: Path) -> None:
    backend = MacOSBackend(home=tmp_path)
    assert isinstance(backend, PlatformBackend) and backend.autostart_supported
    path = tmp_path / "Library" / "LaunchAgents" / "org.butterfly.agent.plist"
    assert backend.autostart_path == path == launch_agent_path(tmp_path)
    assert not backend.autostart_enabled()

    backend.set_autostart(True, COMMAND)
    with path.open("rb") as f:
        assert plistlib.load(f) == launch_agent_plist(COMMAND)
    assert path.read_bytes().startswith(b"<?xml") and backend.autostart_enabled()

    backend.set_autostart(False, COMMAND)
    assert not path.exists() and not backend.autostart_enabled()
    backend.set_autostart(False, COMMAND)


@pytest.mark.parametrize("content", [b"not a plist", plistlib.dumps({"Label": "x", "RunAtLoad": True, "Disabled": True}), plistlib.dumps([1, 2])])
def test_a_broken_or_disabled_agent_counts_as_off(tmp_path: Path, content: bytes) -> None:
    backend = MacOSBackend(home=tmp_path)
    backend.autostart_path.parent.mkdir(parents=True)
    backend.autostart_path.write_bytes(content)
    assert not backend.autostart_enabled()


def test_an_unwritable_home_raises_config_error(tmp_path: Path) -> None:
    (tmp_path / "Library").write_text("a file")
    with pytest.raises(ConfigError, match="starting at login"):
        MacOSBackend(home=tmp_path).set_autostart(True, COMMAND)


def test_idle_runs_ioreg_and_parses_it() -> None:
    calls: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(argv)
        return IOREG_SAMPLE

    assert MacOSBackend(run=run).idle_seconds() == pytest.approx(8.1423945)
    assert calls == [IOREG_COMMAND]
    assert MacOSBackend(run=lambda argv: None).idle_seconds() is None


def test_idle_never_raises() -> None:
    def broken(argv: Sequence[str]) -> str | None:
        raise RuntimeError("boom")

    assert MacOSBackend(run=broken).idle_seconds() is None
