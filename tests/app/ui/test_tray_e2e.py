"""End to end on a real X display with a real system tray: find a pool over mDNS, join it from the menu, serve.

The test starts its own virtual screen (Xvfb) and tray host (trayer), a coordinator
that advertises an open pool over mDNS on 127.0.0.1, and the tray app (driven by
``tray_driver.py``). The app must come up in under a second without torch, list the
pool, join it through the rebuilt menu and the consent dialog, keep its event loop
responsive (no gap over 100 ms) while the compute process loads its layers, and serve
a generation. Screenshots land in ``artifacts/tray-e2e/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.config import CoordinatorConfig
from server.coordinator import Coordinator

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "artifacts" / "tray-e2e"
TOOLS = ("Xvfb", "trayer", "xdotool", "/usr/bin/import", "/usr/bin/convert")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@contextmanager
def x_display_with_tray() -> Iterator[str]:
    """A fresh Xvfb screen with trayer as its system tray; yields the DISPLAY value."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    trayer: subprocess.Popen[bytes] | None = None
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        assert number.isdigit(), "Xvfb did not report its display number"
        display = f":{number}"
        env = dict(os.environ, DISPLAY=display)
        trayer = subprocess.Popen(["trayer", "--edge", "top", "--align", "right", "--width", "10", "--height", "32",
                                   "--transparent", "true", "--alpha", "0", "--tint", "0x121420"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not subprocess.run(["xdotool", "search", "--class", "trayer"], env=env, capture_output=True).stdout.strip():
            assert time.monotonic() < deadline, "trayer did not map its panel within 15 s"
            time.sleep(0.05)
        yield display
    finally:
        for proc in (trayer, xvfb):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


async def next_event(proc: asyncio.subprocess.Process, want: str, *, timeout: float, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The driver's next event named ``want``; fails with everything it said on a timeout or a failure."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} from the tray app within {timeout} s; it said: {seen}")
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), left)
        except TimeoutError:
            continue
        if not raw:
            err = (await proc.stderr.read()).decode(errors="replace")[-3000:] if proc.stderr else ""
            raise AssertionError(f"the tray app exited before {want!r}; it said: {seen}\n{err}")
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        seen.append(event)
        if event.get("event") == "failed":
            raise AssertionError(f"the tray app reports a failure: {event}")
        if event.get("event") == want:
            return event


async def generate(url: str, prompt: str, max_tokens: int, *, cafile: Path) -> list[dict[str, Any]]:
    """Stream from the pool's API over HTTPS, trusting only the pool's own certificate."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    trust = ssl.create_default_context(cafile=str(cafile))
    async with aiohttp.ClientSession() as http, http.post(url + "/api/generate", json=body, ssl=trust) as response:
        assert response.status == 200, await response.text()
        return [json.loads(line) async for line in response.content if line.strip()]


async def test_tray_finds_pool_over_mdns_joins_from_menu_and_serves(tiny_model, tmp_path: Path) -> None:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (install with: sudo bash scripts/system-deps/desktop.sh)")
    pool_name = f"Lab pool {os.getpid()}"
    coordinator = Coordinator(
        CoordinatorConfig(data_dir=tmp_path / "coordinator", port=0, settle_s=0.2, pool_name=pool_name,
                          open_pool=True, mdns=True, mdns_interfaces=("127.0.0.1",)),
        tiny_model,
    )
    await coordinator.start()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE",
               XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_DATA_HOME=str(tmp_path / "data"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    seen: list[dict[str, Any]] = []
    proc: asyncio.subprocess.Process | None = None
    try:
        with x_display_with_tray() as display:
            env["DISPLAY"] = display
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.app.ui.tray_driver", "--pool-id", coordinator.pool_id, "--data-dir", str(tmp_path / "volunteer"),
                "--settings", str(tmp_path / "settings.json"), "--artifacts", str(ARTIFACTS),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, cwd=ROOT,
            )
            started = await next_event(proc, "started", timeout=30, seen=seen)
            assert started["tray"], "the tray app found no system tray on a display that has one"
            assert not started["torch_loaded"], "the tray process imported torch"
            assert started["startup_s"] < 1.0, f"the tray took {started['startup_s']:.2f} s to come up"

            found = await next_event(proc, "found", timeout=30, seen=seen)
            assert pool_name in found["label"]
            serving = await next_event(proc, "serving", timeout=90, seen=seen)
            assert serving["layers"] == ["1–6 of 6"], serving
            assert serving["ticks"] > 10
            assert serving["max_gap_ms"] < 100, f"the GUI stalled for {serving['max_gap_ms']:.0f} ms while layers loaded"

            link = next(iter(coordinator.pool.links.values()))
            assert link.name == "tray-e2e"
            deadline = time.monotonic() + 30
            while not coordinator.pool.pipelines:
                assert time.monotonic() < deadline, "the pool never became ready"
                await asyncio.sleep(0.05)
            lines = await generate(coordinator.url, "t5 t6 t7", 8, cafile=tmp_path / "coordinator" / "pool_cert.pem")
            assert not [line for line in lines if "error" in line], lines
            assert lines[-1]["usage"]["completion_tokens"] == 8
            assert link.steps_served >= 8
            busy_until = time.monotonic() + 4  # a few seconds of steady work for the status window's graph
            while time.monotonic() < busy_until:
                await generate(coordinator.url, "t9 t10", 24, cafile=tmp_path / "coordinator" / "pool_cert.pem")
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.2)
            assert proc.stdin is not None
            proc.stdin.write(b"screenshot\n")
            shots = await next_event(proc, "shots", timeout=30, seen=seen)
            assert shots["menu_visible"], f"a right click on the tray icon did not open the menu: {shots}"
            for name in ("desktop.png", "tray-menu.png", "status-window.png", "consent-dialog.png"):
                assert (ARTIFACTS / name).stat().st_size > 2000, f"{name} is missing or empty"
            proc.stdin.write(b"quit\n")
            await next_event(proc, "bye", timeout=30, seen=seen)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await coordinator.stop()
