"""Hosting from the app: the coordinator command, reading what it prints, starting and stopping it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.hosting import HostedCoordinator, HostRequest, check_model_source, coordinator_argv, lan_address, parse_coordinator_line
from core.errors import ConfigError, PoolUnavailable

POOL_ID = "bf1" + "a" * 26


def test_argv_for_a_private_pool() -> None:
    argv = coordinator_argv(HostRequest(model="default", pool_name=" Lab ", port=0), python="py")
    assert argv == ["py", "-m", "cli", "coordinator", "--model", "default", "--pool-name", "Lab", "--port", "0",
                    "--min-volunteers", "1", "--host", "127.0.0.1"]


def test_argv_for_an_open_pool_shared_on_the_network() -> None:
    argv = coordinator_argv(HostRequest(model="/m/x.gguf", port=9000, share_on_network=True, open_pool=True), python="py", lan_address="192.168.1.7")
    assert argv[-5:] == ["--host", "0.0.0.0", "--public-url", "https://192.168.1.7:9000", "--open"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        (dict(pool_name=""), "pool name"),
        (dict(pool_name="x" * 64), "pool name"),
        (dict(pool_name="a\nb"), "pool name"),
        (dict(port=70000), "port"),
        (dict(port=0, share_on_network=True), "fixed port"),
    ],
)
def test_bad_requests_are_refused(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        HostRequest(**changes)  # type: ignore[arg-type]


def test_model_sources_are_checked(tmp_path: Path) -> None:
    assert check_model_source("default") == "default"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert check_model_source("gguf", str(gguf)) == str(gguf)
    (tmp_path / "hf").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        check_model_source("hf", str(tmp_path / "hf"))
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert check_model_source("hf", str(tmp_path / "hf")) == str(tmp_path / "hf")
    with pytest.raises(ConfigError, match="gguf"):
        check_model_source("gguf", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="choose"):
        check_model_source("hf", " ")


def test_coordinator_lines_are_parsed() -> None:
    assert parse_coordinator_line(f"Pool 'Lab' ({POOL_ID}) serving SmolLM2") == ("pool_id", POOL_ID)
    assert parse_coordinator_line("  clients:    http://127.0.0.1:8765  (butterfly generate …)") == ("url", "http://127.0.0.1:8765")
    assert parse_coordinator_line("  volunteers: ws://127.0.0.1:8765/ws") == ("ws_url", "ws://127.0.0.1:8765/ws")
    assert parse_coordinator_line("  invite:     bfinv1.a.b") == ("invite", "bfinv1.a.b")
    assert parse_coordinator_line("Join with:    butterfly volunteer --invite bfinv1.a.b") is None


def test_lan_address_is_an_ip_or_none() -> None:
    address = lan_address()
    assert address is None or address.count(".") == 3


FAKE = f"""
import signal, sys, time
print("loading the model...")
print("Pool 'Lab' ({POOL_ID}) serving tiny")
print("  clients:    http://127.0.0.1:1234  (butterfly generate ...)")
print("  volunteers: ws://127.0.0.1:1234/ws")
print("  invite:     bfinv1.x.y", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(60)
"""


@pytest.mark.timeout(30)
async def test_hosted_coordinator_reports_its_invite_and_stops() -> None:
    hosted = HostedCoordinator(HostRequest(), argv=[sys.executable, "-c", FAKE])
    info = await hosted.start(timeout_s=20)
    assert (info.url, info.ws_url, info.invite, info.pool_id) == ("http://127.0.0.1:1234", "ws://127.0.0.1:1234/ws", "bfinv1.x.y", POOL_ID)
    assert hosted.running
    await hosted.stop()
    assert not hosted.running


@pytest.mark.timeout(30)
async def test_a_coordinator_that_dies_while_starting_says_why() -> None:
    script = "import sys; print('error: model nope not found (pass a .gguf file)'); sys.exit(2)"
    hosted = HostedCoordinator(HostRequest(), argv=[sys.executable, "-c", script])
    with pytest.raises(PoolUnavailable, match="stopped while starting") as caught:
        await hosted.start(timeout_s=20)
    assert "model nope not found" in str(caught.value.hint)
