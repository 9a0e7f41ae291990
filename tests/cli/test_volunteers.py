"""``butterfly volunteers list|ban|unban``: on the data dir, and against a live pool with a real volunteer process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.identity import Identity, fingerprint
from core.types import NodeId
from server.db import DB_FILE_NAME, Contribution, SqlitePoolRegistry
from server.registry import Member
from tests.conftest import ROOT, live_pool

pytestmark = pytest.mark.timeout(120)


def member(registry: SqlitePoolRegistry, name: str, at: float) -> NodeId:
    key = Identity.generate().public_key
    node_id = NodeId(fingerprint(key))
    registry.admit(Member(node_id, key, name, at), None)
    return node_id


def test_list_ban_and_unban_on_the_data_dir(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    data_dir = tmp_path / "pool"
    Identity.load_or_create(data_dir / "pool_key.pem")
    with SqlitePoolRegistry(data_dir / DB_FILE_NAME) as registry:
        alice = member(registry, "alice", time.time() - 7200)
        bob = member(registry, "bob", time.time() - 60)
        registry.record_contributions({alice: Contribution(steps=12, tokens=340, compute_s=1.5, bytes_in=3 * 2**20, bytes_out=2048)})

    banned = run_cli("volunteers", "ban", bob[:10], "--reason", "sent  garbage", "--data-dir", str(data_dir))
    assert banned.returncode == 0, banned.stderr
    assert bob in banned.stdout and "--url" in banned.stdout

    listed = run_cli("volunteers", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "FINGERPRINT"] and "TOKENS" in header and "STATE" in header
    (alice_row,) = [r for r in rows if r.startswith("alice")]
    (bob_row,) = [r for r in rows if r.startswith("bob")]
    assert alice in alice_row and " 340 " in alice_row and " 12 " in alice_row and "3.0 MiB/2.0 KiB" in alice_row
    assert alice_row.endswith("member")
    assert bob in bob_row and bob_row.endswith("banned: sent garbage")

    as_json = {v["name"]: v for v in json.loads(run_cli("volunteers", "list", "--json", "--data-dir", str(data_dir)).stdout)}
    assert as_json["alice"]["contribution"]["tokens"] == 340 and as_json["alice"]["connected"] is None
    assert as_json["bob"]["banned"] is True

    lifted = run_cli("volunteers", "unban", bob, "--data-dir", str(data_dir))
    assert lifted.returncode == 0 and "lifted" in lifted.stdout
    again = run_cli("volunteers", "unban", bob, "--data-dir", str(data_dir))
    assert again.returncode == 0 and "was not banned" in again.stdout
    unknown = run_cli("volunteers", "ban", "bf1zzzz", "--data-dir", str(data_dir))
    assert unknown.returncode == 2 and "no volunteer" in unknown.stderr


async def test_a_ban_through_the_running_coordinator_disconnects_the_volunteer_and_keeps_it_out(tiny_model, tmp_path: Path) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=1) as pool:
        await pool.wait_ready()
        coord = pool.coordinator
        (link,) = coord.pool.links.values()
        volunteer = pool.by_name["v1"]
        env = os.environ | {"PYTHONPATH": str(ROOT), "BUTTERFLY_ADMIN_KEY": coord.surface.admin.key}

        def butterfly(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cli", *args, "--url", coord.url], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)

        listed = await asyncio.to_thread(butterfly, "volunteers", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        assert (row["name"], row["node_id"], row["state"], row["connected"]) == ("v1", link.node_id, "connected", True)

        banned = await asyncio.to_thread(butterfly, "volunteers", "ban", link.node_id[:12], "--reason", "test ban")
        assert banned.returncode == 0, banned.stderr
        assert "disconnected it" in banned.stdout
        assert link.closed.is_set()
        # It may try to come back; it is refused at the handshake and gives up (a refusal is final).
        exit_code = await asyncio.wait_for(asyncio.to_thread(volunteer.wait), 60)
        assert exit_code != 0
        assert link.node_id not in coord.pool.links
        assert "banned" in pool.logs()
        listed = await asyncio.to_thread(butterfly, "volunteers", "list")
        assert listed.stdout.splitlines()[1].endswith("banned: test ban")
