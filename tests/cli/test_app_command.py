"""``butterfly app --headless``: the desktop agent without a UI starts, reports, and leaves on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def app_command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "app", "--headless", "--no-discovery", "--data-dir", str(tmp_path / "data"),
            "--settings", str(tmp_path / "settings.json"), *extra]


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="sends SIGINT to a child process")
def test_headless_agent_reports_and_quits_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(app_command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first == "[idle] Join a pool found on this network, or use an invite"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "leaving" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_bad_invite_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(app_command(tmp_path, "--invite", "bfinv1.nope"), capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("butterfly: error: malformed invite")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="only Linux sessions can lack a display server")
def test_without_a_display_the_tray_says_to_use_headless(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = str(ROOT)
    command = [c for c in app_command(tmp_path) if c != "--headless"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert "no desktop session" in result.stderr and "--headless" in result.stderr
