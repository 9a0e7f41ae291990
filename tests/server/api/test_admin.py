"""The admin API and the client API's keys, limits and body bounds on a real coordinator (no volunteers needed)."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.errors import StoreError
from core.identity import Identity, fingerprint, verify_invite
from server.api.admin import ADMIN_KEY_FILE, load_or_create_admin_key
from tests.conftest import live_pool

pytestmark = pytest.mark.timeout(120)

ADMIN_ROUTES = [
    ("GET", "/api/admin/invites"),
    ("POST", "/api/admin/invites"),
    ("DELETE", "/api/admin/invites/abc"),
    ("GET", "/api/admin/volunteers"),
    ("POST", "/api/admin/volunteers/bf1abc/ban"),
    ("DELETE", "/api/admin/volunteers/bf1abc/ban"),
    ("POST", "/api/debug/slowdown"),
    ("POST", "/api/debug/anything-added-later"),
]


def session() -> aiohttp.ClientSession:
    """A client for the pool's own address, http or https (these tests are not about certificates)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def plain_error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.json()
    assert set(body) == {"error", "hint"} and isinstance(body["error"], str), body
    return body


def test_the_admin_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "pool" / ADMIN_KEY_FILE
    key = load_or_create_admin_key(path)
    assert key.startswith("bfadm_") and len(key) > 40
    assert load_or_create_admin_key(path) == key
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("short\n")
    with pytest.raises(StoreError, match="does not hold a key") as err:
        load_or_create_admin_key(path)
    assert "delete" in (err.value.hint or "")


async def test_admin_and_debug_paths_need_the_admin_key_and_client_keys_do_not_open_them(tiny_model, tmp_path: Path) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0, api_key="static-client-key-0123") as pool:
        coord = pool.coordinator
        admin = coord.surface.admin
        assert admin.key_path == coord.config.data_dir / ADMIN_KEY_FILE
        assert admin.key_path.read_text().strip() == admin.key
        _, stored = coord.surface.keys.create("client", now=time.time())
        async with session() as http:
            for method, path in ADMIN_ROUTES:
                for headers in ({}, bearer("wrong-key"), bearer("static-client-key-0123"), bearer(stored), {"Authorization": admin.key}):
                    async with http.request(method, coord.url + path, headers=headers, json={}) as r:
                        assert r.status == 401, (method, path, headers)
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
                        body = await plain_error(r)
                        assert "admin key" in body["error"] and "client API keys" in body["hint"]
            async with http.get(coord.url + "/api/admin/invites", headers=bearer(admin.key)) as r:
                assert r.status == 200
            # ... and the admin key is not a client key.
            async with http.get(coord.url + "/v1/models", headers=bearer(admin.key)) as r:
                assert r.status == 401
                assert (await r.json())["error"]["type"] == "authentication_error"
            async with http.post(coord.url + "/api/generate", headers=bearer(admin.key), json={"prompt": "t5"}) as r:
                assert r.status == 401
                await plain_error(r)


async def test_invites_through_the_admin_api(tiny_model, tmp_path: Path) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0) as pool:
        coord = pool.coordinator
        auth = bearer(coord.surface.admin.key)
        async with session() as http:
            async with http.post(coord.url + "/api/admin/invites", headers=auth, json={"ttl_s": 600, "max_uses": 1, "label": "for Alice"}) as r:
                assert r.status == 201, await r.text()
                made = await r.json()
            invite = verify_invite(made["token"], pool=coord.identity, now=time.time())
            assert invite.addresses == (coord.ws_url,) and invite.max_uses == 1
            assert made["link"].startswith("butterfly://join?invite=")
            assert made["invite"] | {"created_at": None, "expires_at": None} == {
                "id": invite.invite_id, "label": "for Alice", "pool_name": coord.config.pool_name, "created_at": None,
                "expires_at": None, "uses": 0, "max_uses": 1, "revoked_at": None, "state": "active",
            }
            async with http.get(coord.url + "/api/admin/invites", headers=auth) as r:
                listed = {i["id"]: i for i in (await r.json())["invites"]}
            assert listed[invite.invite_id]["state"] == "active" and len(listed) == 2  # and live_pool's own
            async with http.delete(coord.url + f"/api/admin/invites/{invite.invite_id[:8]}", headers=auth) as r:
                assert r.status == 200
                assert (await r.json())["invite"]["state"] == "revoked"
            record = coord.registry.invite(invite.invite_id, time.time())
            assert record is not None and record.revoked_at is not None
            for body in ({"ttl_s": -1}, {"ttl_s": "soon"}, {"max_uses": 0}, {"max_uses": True}, {"label": 5}, [1]):
                async with http.post(coord.url + "/api/admin/invites", headers=auth, json=body) as r:
                    assert r.status == 400, body
                    await plain_error(r)
            async with http.delete(coord.url + "/api/admin/invites/nosuchinvite", headers=auth) as r:
                assert r.status == 400
                assert "no invite" in (await plain_error(r))["error"]


async def test_bans_through_the_admin_api(tiny_model, tmp_path: Path) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0) as pool:
        coord = pool.coordinator
        auth = bearer(coord.surface.admin.key)
        stranger = fingerprint(Identity.generate().public_key)
        async with session() as http:
            async with http.post(coord.url + f"/api/admin/volunteers/{stranger}/ban", headers=auth, json={"reason": "known spammer"}) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            assert answer["disconnected"] is False
            assert answer["volunteer"]["state"] == "banned" and answer["volunteer"]["ban_reason"] == "known spammer"
            assert coord.registry.is_banned(stranger)
            async with http.get(coord.url + "/api/admin/volunteers", headers=auth) as r:
                (row,) = (await r.json())["volunteers"]
            assert row["node_id"] == stranger and row["member"] is False and row["connected"] is False
            async with http.delete(coord.url + f"/api/admin/volunteers/{stranger[:10]}/ban", headers=auth) as r:
                assert (await r.json())["was_banned"] is True
            async with http.delete(coord.url + f"/api/admin/volunteers/{stranger}/ban", headers=auth) as r:
                assert (await r.json())["was_banned"] is False
            assert not coord.registry.is_banned(stranger)
            async with http.post(coord.url + "/api/admin/volunteers/bf1zz/ban", headers=auth) as r:
                assert r.status == 400
                assert "no volunteer" in (await plain_error(r))["error"]


async def test_generate_takes_stored_keys_and_applies_the_per_key_rate_limit(tiny_model, tmp_path: Path) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0, api_requests_per_minute=2) as pool:
        coord = pool.coordinator
        _, key = coord.surface.keys.create("client", now=time.time())
        async with session() as http:
            async with http.post(coord.url + "/api/generate", json={}) as r:
                assert r.status == 401
                assert "requires an API key" in (await plain_error(r))["error"]
            for _ in range(2):  # the key is accepted: the request fails on its body, after the checks
                async with http.post(coord.url + "/api/generate", headers=bearer(key), json={}) as r:
                    assert r.status == 400, await r.text()
            async with http.post(coord.url + "/api/generate", headers=bearer(key), json={}) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == "30"
                assert "requests a minute" in (await plain_error(r))["error"]
            async with http.post(coord.url + "/v1/completions", headers=bearer(key), json={}) as r:  # one budget for both APIs
                assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["error"]["code"] == "rate_limit_exceeded"


async def test_oversized_bodies_get_413_in_the_shape_of_their_api(tiny_model, tmp_path: Path) -> None:
    async with live_pool(tiny_model, tmp_path, volunteers=0, http_max_body_bytes=64 * 1024) as pool:
        coord = pool.coordinator
        big = b'{"prompt": "' + b"x" * (128 * 1024) + b'"}'
        headers = {"Content-Type": "application/json"} | bearer(coord.surface.admin.key)
        async with session() as http:
            async with http.post(coord.url + "/api/generate", data=big, headers=headers) as r:
                assert r.status == 413
                assert "65536 bytes" in (await plain_error(r))["error"]
            async with http.post(coord.url + "/v1/chat/completions", data=big, headers=headers) as r:
                assert r.status == 413
                assert (await r.json())["error"]["code"] == "request_too_large"
            async with http.post(coord.url + "/api/admin/invites", data=big, headers=headers) as r:
                assert r.status == 413
                await plain_error(r)

            async def chunked() -> Any:  # no Content-Length: refused while it is read
                for _ in range(16):
                    yield b"x" * 16 * 1024

            async with http.post(coord.url + "/api/generate", data=chunked(), headers=headers) as r:
                assert r.status == 413
                await plain_error(r)
            async with http.get(coord.url + "/healthz") as r:
                assert r.status == 200
