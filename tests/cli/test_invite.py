"""``butterfly invite create|list|revoke`` as a host runs it: on the data dir, and against a running coordinator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.identity import Identity, create_invite, fingerprint, parse_invite, verify_invite
from core.types import NodeId
from server.db import DB_FILE_NAME, SqlitePoolRegistry
from server.registry import Member
from tests.conftest import ROOT, live_pool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    """The data dir of a pool that was hosted here once (its key exists)."""
    data_dir = tmp_path / "pool"
    Identity.load_or_create(data_dir / "pool_key.pem")
    return data_dir


def test_invite_without_an_action_still_creates_one(pool_dir: Path) -> None:
    made = subprocess.run(  # as a user types it, in a process of its own
        [sys.executable, "-m", "cli", "invite", "--data-dir", str(pool_dir), "--url", "ws://127.0.0.1:9999/ws", "--uses", "1", "--ttl", "10m"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    invite = verify_invite(token, pool=Identity.load_or_create(pool_dir / "pool_key.pem"), now=time.time())
    assert invite.addresses == ("ws://127.0.0.1:9999/ws",) and invite.max_uses == 1
    assert 590 < invite.expires_at - time.time() <= 600
    assert "butterfly://join?invite=" in made.stderr and f"invite {invite.invite_id}: 1 use(s)" in made.stderr
    with SqlitePoolRegistry(pool_dir / DB_FILE_NAME) as registry:
        assert registry.invite(invite.invite_id, time.time()) is not None  # recorded: it can be listed and revoked


def test_create_list_and_revoke_on_the_data_dir(pool_dir: Path, run_cli) -> None:  # noqa: ANN001
    pool = Identity.load_or_create(pool_dir / "pool_key.pem")
    single = run_cli("invite", "create", "--data-dir", str(pool_dir), "--uses", "1", "--note", "for Bob")
    assert single.returncode == 0, single.stderr
    assert "(for Bob)" in single.stderr
    single_id = parse_invite(single.stdout.strip()).invite_id
    assert parse_invite(single.stdout.strip()).addresses == ("wss://127.0.0.1:8765/ws",)
    many = run_cli("invite", "create", "--data-dir", str(pool_dir), "--ttl", "2h", "--label", "the lab")
    many_id = parse_invite(many.stdout.strip()).invite_id
    spare = run_cli("invite", "create", "--data-dir", str(pool_dir))
    spare_id = parse_invite(spare.stdout.strip()).invite_id
    with SqlitePoolRegistry(pool_dir / DB_FILE_NAME) as registry:  # Bob joins: the single-use invite is used up
        key = Identity.generate().public_key
        registry.admit(Member(NodeId(fingerprint(key)), key, "bob", time.time()), parse_invite(single.stdout.strip()))
        old = create_invite(pool, pool_name="p", addresses=["ws://x/ws"], ttl_s=60, max_uses=None, now=time.time() - 3600)
        registry.record_invite(parse_invite(old), created_at=time.time() - 3600)

    revoked = run_cli("invite", "revoke", spare_id[:6], "--data-dir", str(pool_dir))
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked invite {spare_id}" in revoked.stdout

    listed = run_cli("invite", "list", "--data-dir", str(pool_dir))
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "LABEL", "CREATED", "EXPIRES", "USES", "STATE"]
    by_id = {row.split()[0]: row for row in rows}
    assert by_id[single_id].endswith("used up") and by_id[single_id].split()[-3] == "1/1" and "for Bob" in by_id[single_id]
    assert by_id[many_id].split()[-2:] == ["0/∞", "active"] and "the lab" in by_id[many_id]
    assert by_id[spare_id].endswith("revoked")
    assert by_id[parse_invite(old).invite_id].endswith("expired")

    as_json = json.loads(run_cli("invite", "list", "--json", "--data-dir", str(pool_dir)).stdout)
    assert {i["id"]: i["state"] for i in as_json} == {
        single_id: "used up", many_id: "active", spare_id: "revoked", parse_invite(old).invite_id: "expired"
    }


def test_revoking_an_unknown_id_is_a_clear_error(pool_dir: Path, run_cli) -> None:  # noqa: ANN001
    for _ in range(2):
        assert run_cli("invite", "create", "--data-dir", str(pool_dir)).returncode == 0
    for wanted, problem in (("zzzz", "no invite"), ("", "no invite")):
        out = run_cli("invite", "revoke", wanted, "--data-dir", str(pool_dir))
        assert out.returncode == 2 and problem in out.stderr and "Traceback" not in out.stderr


def test_the_data_dir_of_no_pool_is_refused_without_creating_anything(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    for action in ("create", "list"):
        out = run_cli("invite", action, "--data-dir", str(tmp_path / "nowhere"))
        assert out.returncode == 2 and "no pool key" in out.stderr and "--url" in out.stderr
    assert not (tmp_path / "nowhere").exists()


async def test_create_list_and_revoke_through_a_running_coordinator(
    tiny_model, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0) as pool:
        coord = pool.coordinator
        key = coord.surface.admin.key
        remote = ("--url", coord.url, "--data-dir", str(tmp_path / "elsewhere"))  # a machine without the data dir

        made = await asyncio.to_thread(run_cli, "invite", "create", *remote, "--admin-key", key, "--uses", "1", "--label", "remote")
        assert made.returncode == 0, made.stderr
        invite = verify_invite(made.stdout.strip(), pool=coord.identity, now=time.time())
        assert invite.addresses == (coord.ws_url,) and "butterfly://" in made.stderr

        monkeypatch.setenv("BUTTERFLY_ADMIN_KEY", key)
        listed = await asyncio.to_thread(run_cli, "invite", "list", *remote)
        monkeypatch.delenv("BUTTERFLY_ADMIN_KEY")
        assert listed.returncode == 0, listed.stderr
        row = next(r for r in listed.stdout.splitlines() if r.startswith(invite.invite_id))
        assert "remote" in row and row.split()[-2:] == ["0/1", "active"]

        # On the host itself the admin key is found in the data dir.
        local = ("--url", coord.url, "--data-dir", str(coord.config.data_dir))
        revoked = await asyncio.to_thread(run_cli, "invite", "revoke", invite.invite_id[:7], *local)
        assert revoked.returncode == 0, revoked.stderr
        record = coord.registry.invite(invite.invite_id, time.time())
        assert record is not None and record.revoked_at is not None

        wrong = await asyncio.to_thread(run_cli, "invite", "list", *remote, "--admin-key", "not-the-admin-key")
        assert wrong.returncode == 1 and "refused the admin key" in wrong.stderr
        keyless = await asyncio.to_thread(run_cli, "invite", "list", *remote)
        assert keyless.returncode == 2 and "admin key" in keyless.stderr and "Traceback" not in keyless.stderr


async def test_over_https_the_admin_key_goes_only_to_the_pinned_pool(tiny_model, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    async with live_pool(tiny_model, tmp_path, volunteers=0, insecure_loopback=False) as pool:
        coord = pool.coordinator
        assert coord.url.startswith("https://")
        here = ("--url", coord.url, "--data-dir", str(coord.config.data_dir))  # pinned to the pool key in the data dir
        listed = await asyncio.to_thread(run_cli, "invite", "list", *here)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[0].split()[0] == "ID"

        elsewhere = ("--url", coord.url, "--data-dir", str(tmp_path / "elsewhere"), "--admin-key", coord.surface.admin.key)
        unpinned = await asyncio.to_thread(run_cli, "invite", "list", *elsewhere)
        assert unpinned.returncode == 2 and "--pool-id" in unpinned.stderr
        impostor = fingerprint(Identity.generate().public_key)
        wrong = await asyncio.to_thread(run_cli, "invite", "list", *elsewhere, "--pool-id", impostor)
        assert wrong.returncode == 1 and "impersonating" in wrong.stderr
        pinned = await asyncio.to_thread(run_cli, "invite", "create", *elsewhere, "--pool-id", coord.pool_id)
        assert pinned.returncode == 0, pinned.stderr
        assert parse_invite(pinned.stdout.strip()).addresses == (coord.ws_url,)
