"""``butterfly status`` rendering and ``butterfly apikey`` against a data dir, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from cli.status import fetch_view, render_status
from core.errors import PoolUnavailable
from server.api.keys import KEYS_FILE, KeyStore

VIEW = {
    "pool": {"id": "bf1abc", "name": "Lab pool", "url": "http://127.0.0.1:8765"},
    "model": {"id": "m", "name": "SmolLM2-135M-Instruct", "layers": 30},
    "ready": True,
    "last_error": None,
    "volunteers": [
        {"node_id": "n1", "name": "laptop", "device": "cpu", "os": "Linux", "memory_bytes": 8 * 2**30, "rtt_ms": 0.42,
         "steps": 120, "handed_off_steps": 90, "step_ms": 11.5, "utilisation": 0.34, "layers": [[0, 15]], "draining": False},
        {"node_id": "n2", "name": "desktop-with-a-long-name", "device": "cuda", "os": "Windows", "memory_bytes": 16 * 2**30,
         "rtt_ms": 3.25, "steps": 120, "step_ms": 150.0, "utilisation": 0.9, "layers": [[15, 30]], "draining": True},
        {"node_id": "n3", "name": "spare", "device": "mps", "os": "macOS", "memory_bytes": 4 * 2**30, "rtt_ms": None,
         "steps": 0, "step_ms": None, "utilisation": 0.0, "layers": [], "draining": False},
    ],
    "pipelines": [[{"node_id": "n1", "name": "laptop", "start": 0, "end": 15},
                   {"node_id": "n2", "name": "desktop-with-a-long-name", "start": 15, "end": 30}]],
    "events": [{"time": 0.0 + i, "kind": "join" if i % 2 else "plan", "text": f"event {i}"} for i in range(14)],
    "queue": {"running": 1, "waiting": 0, "capacity": 8, "max_queue": 32},
    "throughput": {"tokens_per_s": 12.345, "tokens_total": 240, "stage_failures": 1, "history": []},
}


def test_render_status_is_a_readable_table() -> None:
    text = render_status(VIEW, local_time=False)
    lines = text.splitlines()
    assert lines[0] == "Lab pool  (bf1abc)"
    assert "SmolLM2-135M-Instruct, 30 layers — ready" in text
    assert "3 volunteers, 1 pipeline; 12.3 tokens/s, 240 tokens in all, 1 stage failure" in text
    assert "1 running, 0 waiting" in text
    header = next(line for line in lines if line.startswith("VOLUNTEER"))
    rows = lines[lines.index(header) + 1 : lines.index(header) + 4]
    # Columns line up: every row's LAYERS cell starts where the header's does.
    col = header.index("LAYERS")
    assert rows[0][col:].startswith("[0, 15)") and rows[1][col:].startswith("[15, 30)") and rows[2][col:].startswith("–")
    assert "0.4 ms" in rows[0] and "34%" in rows[0] and "serving" in rows[0] and "8.0 GiB" in rows[0]
    assert "150 ms" in rows[1] and "draining" in rows[1]
    direct = header.index("DIRECT")
    assert rows[0][direct:].startswith("75%") and rows[1][direct:].startswith("pool") and rows[2][direct:].startswith("–")
    assert rows[2].rstrip().endswith("idle")
    assert "  0: laptop [0, 15) → desktop-with-a-long-name [15, 30)" in lines
    events = lines[lines.index("RECENT EVENTS") + 1 :]
    assert [e for e in events if e.strip()][-1].endswith("event 13") and not any("event 3" in e for e in events)
    assert "00:00:13  join" in text


def test_render_status_of_an_empty_pool() -> None:
    text = render_status({"model": {"name": "M", "layers": 2}, "ready": False, "last_error": "waiting for volunteers: 0 of 2"})
    assert "not ready: waiting for volunteers: 0 of 2" in text and "no volunteers connected" in text


def test_fetch_view_explains_an_unreachable_coordinator() -> None:
    with pytest.raises(PoolUnavailable, match="cannot reach the coordinator"):
        fetch_view("http://127.0.0.1:9", timeout=2)


def test_status_command_fails_cleanly_without_a_coordinator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the coordinator" in capsys.readouterr().err


def test_apikey_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["apikey", "--data-dir", str(tmp_path)]
    assert main([*data, "list"]) == 0
    assert "no API keys" in capsys.readouterr().out
    assert main([*data, "create", "--name", "ci"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("bfk_") and "shown only now" in out.err
    key = KeyStore(tmp_path / KEYS_FILE).verify(secret)
    assert key is not None and key.name == "ci"
    assert secret not in (tmp_path / KEYS_FILE).read_text()
    assert main([*data, "list"]) == 0
    listing = capsys.readouterr().out
    assert key.key_id in listing and "active" in listing and secret not in listing
    assert main([*data, "revoke", key.key_id]) == 0
    assert f"revoked key {key.key_id}" in capsys.readouterr().out
    assert KeyStore(tmp_path / KEYS_FILE).verify(secret) is None
    assert main([*data, "revoke", "ffffffffff"]) == 2
    assert "no key with id" in capsys.readouterr().err
