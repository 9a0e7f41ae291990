"""The ``butterfly`` command as a user runs it: real processes, real sockets, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import parse_duration
from core.errors import ConfigError
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(300)


def butterfly(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:  # noqa: ANN003
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Keep every platform dir (keys, store, caches) inside the test's folder."""
    return dict(
        os.environ,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        OMP_WAIT_POLICY="PASSIVE",
    )


def read_until(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(seen)}\n{proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration("soon")


def test_version_and_help(env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "cli", "--version"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("butterfly ")
    out = subprocess.run([sys.executable, "-m", "cli", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    for command in ("coordinator", "invite", "volunteer", "generate", "demo"):
        assert command in out.stdout


def test_invite_without_a_pool_key_says_how_to_get_one(env: dict[str, str], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "invite", "--data-dir", str(tmp_path / "nowhere")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "no pool key" in out.stderr and "butterfly coordinator" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_coordinator_invite_volunteer_generate_and_ctrl_c_drain(env: dict[str, str], tiny_llama_dir: Path, tmp_path: Path) -> None:
    coord = butterfly("coordinator", "--model", str(tiny_llama_dir), "--port", "0", "--data-dir", str(tmp_path / "pool"), env=env)
    procs = [coord]
    try:
        pool_id = read_until(coord, r"\((bf1\S+)\) serving").group(1)
        url = read_until(coord, r"clients:\s+(https://\S+)").group(1)
        read_until(coord, r"invite:")
        # A second invite made from the command line, as a host would.
        ws_url = url.replace("https://", "wss://") + "/ws"
        made = subprocess.run(
            [sys.executable, "-m", "cli", "invite", "--data-dir", str(tmp_path / "pool"), "--url", ws_url, "--uses", "1", "--ttl", "10m"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        assert made.returncode == 0, made.stderr
        invite = made.stdout.strip()
        assert invite.startswith("bfinv1.") and "butterfly://" in made.stderr
        vol = butterfly("volunteer", "--invite", invite, "--name", "cli-volunteer", "--threads", "1",
                        "--data-dir", str(tmp_path / "vol"), env=env)
        procs.append(vol)
        read_until(vol, r"serving layers")
        gen = subprocess.run(
            [sys.executable, "-m", "cli", "generate", "--url", url, "--pool-id", pool_id, "--raw", "t5 t6 t7", "--max-tokens", "12"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert gen.returncode == 0, gen.stderr
        assert re.fullmatch(r"(\s*t\d+)+\s*", gen.stdout), gen.stdout
        assert "tokens/s" in gen.stderr
        # Ctrl-C: the volunteer drains and the coordinator lets it go; it exits cleanly.
        vol.send_signal(signal.SIGINT)
        assert vol.wait(timeout=60) == 0, vol.stderr.read()
        assert "leaving the pool" in vol.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert coord.returncode == 0


@pytest.mark.slow
def test_demo_prints_split_answer_and_speed(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--max-tokens", "40", "--prompt", "Name three colours of the rainbow."],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(re.findall(r"pipeline 0: layers \[\s*\d+,\s*\d+\) on volunteer-\d", out.stdout)) == 3
    answer = out.stdout.split("Name three colours of the rainbow.", 1)[1]
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 10, answer
    assert re.search(r"\d+ tokens; time to first token \d+ ms; [\d.]+ tokens/s", out.stdout)
