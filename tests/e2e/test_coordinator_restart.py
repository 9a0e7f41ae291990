"""A coordinator killed and restarted: volunteers rejoin on their own, the pool re-forms.

Everything runs as real processes: ``butterfly coordinator`` and two ``butterfly
volunteer``s on loopback. The pool's key and members live in the coordinator's data dir
(SQLite), so after a restart the volunteers are recognised without a new invite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cli.commands import stream_generate
from core.errors import ButterflyError
from core.identity import Identity
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, cert: Path, timeout: float = 90) -> None:
    """Poll ``/healthz`` over HTTPS, trusting only the pool's own certificate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trust = ssl.create_default_context(cafile=str(cert))
            trust.check_hostname = False
            with urllib.request.urlopen(url + "/healthz", timeout=2, context=trust) as r:  # noqa: S310 - loopback
                if json.loads(r.read()).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s")


def generate(url: str, pool_id: str, n: int = 10) -> str:
    text = ""
    for line in stream_generate(url, {"prompt": "t3 t4 t5", "max_tokens": n, "ignore_eos": True}, pool_id=pool_id):
        if "error" in line:
            raise AssertionError(line["error"])
        text += line.get("text", "")
    return text


def test_volunteers_rejoin_a_restarted_coordinator(tiny_llama_dir: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"),
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE",
    )
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    cert = tmp_path / "pool" / "pool_cert.pem"
    coordinator_cmd = [sys.executable, "-m", "cli", "coordinator", "--model", str(tiny_llama_dir), "--port", str(port),
                       "--data-dir", str(tmp_path / "pool"), "--min-volunteers", "2"]
    procs: list[subprocess.Popen] = []

    def start_coordinator() -> subprocess.Popen:
        proc = subprocess.Popen(coordinator_cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        return proc

    try:
        coordinator = start_coordinator()
        invite = None
        for line in coordinator.stdout:
            if line.strip().startswith("invite:"):
                invite = line.split(":", 1)[1].strip()
                break
        assert invite
        pool_id = Identity.load_or_create(tmp_path / "pool" / "pool_key.pem").fingerprint
        for name in ("left", "right"):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", name, "--threads", "1",
                 "--data-dir", str(tmp_path / name)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        wait_ready(url, cert)
        before = generate(url, pool_id)
        assert before.split()

        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(timeout=10)
        restarted = start_coordinator()
        wait_ready(url, cert)  # the volunteers came back by themselves, without a new invite
        assert generate(url, pool_id) == before

        # A graceful stop ends a running answer with a clear error, not a hang.
        errors: list[str] = []

        def long_request() -> None:
            try:
                for line in stream_generate(url, {"prompt": "t3 t4 t5", "max_tokens": 100000 // 100, "ignore_eos": True}, pool_id=pool_id):
                    if "error" in line:
                        errors.append(line["error"])
            except ButterflyError as exc:
                errors.append(str(exc))

        client = threading.Thread(target=long_request)
        client.start()
        time.sleep(0.5)
        restarted.send_signal(signal.SIGINT)
        client.join(timeout=60)
        assert restarted.wait(timeout=30) == 0
        assert errors and "shutting down" in errors[0], errors
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

    from server.db import DB_FILE_NAME, SqlitePoolRegistry

    with SqlitePoolRegistry(tmp_path / "pool" / DB_FILE_NAME) as registry:
        records = registry.member_records()
    assert sorted(r.name for r in records) == ["left", "right"]
    assert sum(r.contribution.steps for r in records) > 0, records  # a hot spare may have served nothing
