"""The admin API of a running coordinator, behind its own key.

Every path under ``/api/admin/`` and ``/api/debug/`` needs ``Authorization: Bearer <admin
key>``; client API keys never open them (and the admin key is no client key). The key is
``config.admin_key`` or, by default, the one in ``admin.key`` in the data dir, created on
first start (mode 0600). It is a file of its own rather than a row in ``pool.sqlite3`` so
that the host can read it to use from another machine, so that a copy or backup of the
pool database carries no secret, and so that the CLI on the host finds it like the pool key.

Routes (JSON in and out; errors are ``{"error": message, "hint": hint}``)::

    GET    /api/admin/invites                    -> {"invites": [invite, ...]}
    POST   /api/admin/invites                    {"ttl_s", "max_uses", "label"} -> 201 {"invite", "token", "link"}
    DELETE /api/admin/invites/{id or prefix}     -> {"invite": invite}              (revoke)
    GET    /api/admin/volunteers                 -> {"volunteers": [volunteer, ...]}
    POST   /api/admin/volunteers/{id}/ban        {"reason"} -> {"volunteer", "disconnected"}
    DELETE /api/admin/volunteers/{id}/ban        -> {"volunteer", "was_banned"}     (unban)

Shapes: :mod:`server.api.admin_view`. A ban also disconnects the volunteer if it is
connected: it is told why (an Error frame) and the connection closes with 4003.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from core.errors import AuthFailed, ButterflyError, ConfigError, StoreError
from core.identity import Identity, invite_link, parse_invite
from core.private_file import create_private_file
from core.types import NodeId
from server.admission import issue_invite
from server.api.access import bearer_token
from server.api.admin_view import invite_view, volunteer_views
from server.api.errors import plain_error

if TYPE_CHECKING:
    from server.config import CoordinatorConfig
    from server.db import SqlitePoolRegistry
    from server.links import VolunteerLink
    from server.pool import Pool

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin.key"
ADMIN_KEY_PREFIX = "bfadm_"
ADMIN_PREFIXES = ("/api/admin/", "/api/debug/")
DEFAULT_INVITE_TTL_S = 24 * 3600.0
DEFAULT_BAN_REASON = "banned by the host"
MAX_REASON_CHARS = 200
DISCONNECT_WAIT_S = 5.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- the key -----------------------------------------------------------------------------


def new_admin_key() -> str:
    """A fresh admin key: the ``bfadm_`` prefix and 256 random bits, URL-safe."""
    return ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)


def load_or_create_admin_key(path: Path) -> str:
    """The admin key stored at ``path``; created there (mode 0600) if absent.

    Two processes racing to create it end up with the same key. An unreadable or
    malformed file raises :class:`StoreError` saying how to fix it.
    """
    path = Path(path)
    if not path.exists():
        try:
            _create_key_file(path, new_admin_key())
        except FileExistsError:
            pass  # another process wrote it first: use theirs
        except OSError as exc:
            raise StoreError(f"cannot write the admin key {path}: {exc}",
                             hint=f"make {path.parent} writable by this user, or pass another --data-dir") from exc
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read the admin key {path}: {exc}",
                         hint=f"make {path} readable by this user, or delete it to have a new key made") from exc
    if len(key) < 16 or any(c.isspace() for c in key):
        raise StoreError(f"the admin key file {path} does not hold a key",
                         hint=f"delete {path} and restart the coordinator to have a new one made")
    return key


def _create_key_file(path: Path, key: str) -> None:
    """Write ``key`` to a new 0600 file at ``path`` (see :func:`core.private_file.create_private_file`)."""
    create_private_file(path, (key + "\n").encode("utf-8"))


def is_admin_path(request: web.Request) -> bool:
    """Whether the request is for an admin or debug endpoint (by its path or by the route it matched)."""
    resource = getattr(request.match_info.route, "resource", None)
    canonical = getattr(resource, "canonical", "") or ""
    return any(p.startswith(prefix) or p + "/" == prefix for p in (request.path, canonical) for prefix in ADMIN_PREFIXES)


# --- the API -----------------------------------------------------------------------------


class AdminParts(Protocol):
    """What the admin API reads from its coordinator (``ws_url`` is known only once bound)."""

    config: CoordinatorConfig
    identity: Identity
    registry: SqlitePoolRegistry
    pool: Pool

    @property
    def ws_url(self) -> str: ...


class AdminApi:
    """The admin routes and the middleware that keeps admin and debug paths behind ``key``.

    ``key_path`` is where the key was read from (None: given in the configuration);
    ``clock`` (default :func:`time.time`) stamps invites and bans.
    """

    def __init__(
        self, parts: AdminParts, *, key: str, key_path: Path | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.parts = parts
        self.key = key
        self.key_path = key_path
        self._clock = clock

    @classmethod
    def for_coordinator(cls, parts: AdminParts) -> AdminApi:
        """The admin API with the configured key, or the data dir's (created on first start)."""
        config = parts.config
        if config.admin_key is not None:
            return cls(parts, key=config.admin_key, key_path=None)
        path = config.data_dir / ADMIN_KEY_FILE
        return cls(parts, key=load_or_create_admin_key(path), key_path=path)

    def install(self, app: web.Application) -> None:
        """Add the admin routes and the admin-key middleware to ``app``."""
        app.middlewares.append(self.guard)
        route = app.router
        route.add_get("/api/admin/invites", _plain_errors(self.list_invites))
        route.add_post("/api/admin/invites", _plain_errors(self.create_invite))
        route.add_delete("/api/admin/invites/{invite_id}", _plain_errors(self.revoke_invite))
        route.add_get("/api/admin/volunteers", _plain_errors(self.list_volunteers))
        route.add_post("/api/admin/volunteers/{node_id}/ban", _plain_errors(self.ban))
        route.add_delete("/api/admin/volunteers/{node_id}/ban", _plain_errors(self.unban))

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse admin and debug paths (401) unless the request carries the admin key."""
        if is_admin_path(request):
            token = bearer_token(request)
            if token is None or not hmac.compare_digest(token.encode(), self.key.encode()):
                problem = "this endpoint needs the pool's admin key" if token is None else "wrong admin key"
                where = f"the coordinator's {self.key_path}" if self.key_path else "the coordinator's --admin-key"
                return web.json_response(
                    {"error": problem, "hint": f"send 'Authorization: Bearer <admin key>' (the key is in {where}); "
                                               "client API keys do not open admin endpoints"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="butterfly-admin"'},
                )
        return await handler(request)

    # --- invites -------------------------------------------------------------------

    async def list_invites(self, request: web.Request) -> web.Response:
        """``GET /api/admin/invites``: every invite with its state now."""
        records = self.parts.registry.list_invites(self._clock())
        return web.json_response({"invites": [invite_view(r) for r in records]})

    async def create_invite(self, request: web.Request) -> web.Response:
        """``POST /api/admin/invites``: sign and record an invite to this coordinator's address."""
        body = await _json_object(request)
        ttl_s = body.get("ttl_s", DEFAULT_INVITE_TTL_S)
        max_uses = body.get("max_uses")
        label = body.get("label")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
            raise ConfigError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1):
            raise ConfigError(f"max_uses must be a positive integer or null, got {max_uses!r}")
        if label is not None and not isinstance(label, str):
            raise ConfigError("label must be text")
        parts, now = self.parts, self._clock()
        token = issue_invite(
            parts.identity, parts.registry, pool_name=parts.config.pool_name, addresses=[parts.ws_url],
            ttl_s=float(ttl_s), max_uses=max_uses, now=now, label=label,
        )
        record = parts.registry.invite(parse_invite(token).invite_id, now)
        assert record is not None  # just recorded
        return web.json_response({"invite": invite_view(record), "token": token, "link": invite_link(token)}, status=201)

    async def revoke_invite(self, request: web.Request) -> web.Response:
        """``DELETE /api/admin/invites/{id}``: revoke the invite with that id or unique prefix."""
        registry, now = self.parts.registry, self._clock()
        found = registry.find_invite(request.match_info["invite_id"], now)
        record = registry.revoke_invite(found.invite_id, now)
        self.parts.pool.events.add("admin", f"invite {record.invite_id} revoked")
        return web.json_response({"invite": invite_view(record)})

    # --- volunteers ----------------------------------------------------------------

    async def list_volunteers(self, request: web.Request) -> web.Response:
        """``GET /api/admin/volunteers``: members and banned keys, with who is connected now."""
        return web.json_response({"volunteers": self._volunteers()})

    async def ban(self, request: web.Request) -> web.Response:
        """``POST /api/admin/volunteers/{id}/ban``: ban that key and disconnect it if connected."""
        body = await _json_object(request)
        reason = body.get("reason") or DEFAULT_BAN_REASON
        if not isinstance(reason, str):
            raise ConfigError("reason must be text")
        reason = " ".join(reason.split())[:MAX_REASON_CHARS]
        parts = self.parts
        node_id = parts.registry.find_node(request.match_info["node_id"], also=list(parts.pool.links))
        parts.registry.ban(node_id, reason, self._clock())
        link = parts.pool.links.get(node_id)
        disconnected = link is not None and not link.closed.is_set()
        if link is not None and disconnected:
            await disconnect_banned(link, reason)
        name = link.name if link is not None else node_id[:12]
        parts.pool.events.add("admin", f"{name} banned: {reason}")
        return web.json_response({"volunteer": self._volunteer(node_id), "disconnected": disconnected})

    async def unban(self, request: web.Request) -> web.Response:
        """``DELETE /api/admin/volunteers/{id}/ban``: lift the ban on that key."""
        parts = self.parts
        node_id = parts.registry.find_node(request.match_info["node_id"], also=list(parts.pool.links))
        was_banned = parts.registry.unban(node_id)
        if was_banned:
            parts.pool.events.add("admin", f"ban on {node_id[:12]} lifted")
        return web.json_response({"volunteer": self._volunteer(node_id), "was_banned": was_banned})

    def _volunteers(self) -> list[dict[str, Any]]:
        registry = self.parts.registry
        connected = {n: link.name for n, link in self.parts.pool.links.items() if not link.closed.is_set()}
        return volunteer_views(registry.member_records(), registry.bans(), connected=connected, now=self._clock())

    def _volunteer(self, node_id: NodeId) -> dict[str, Any] | None:
        return next((v for v in self._volunteers() if v["node_id"] == node_id), None)


async def disconnect_banned(link: VolunteerLink, reason: str) -> None:
    """Tell a connected volunteer it is banned (an Error frame) and close its connection (4003)."""
    link.close_reason = f"banned by the host: {reason}"
    error = AuthFailed(f"this volunteer key was banned from the pool: {reason}", hint="ask the pool's host")
    try:
        await asyncio.wait_for(link.channel.fail(error), DISCONNECT_WAIT_S)
    except (TimeoutError, ButterflyError, OSError) as exc:
        log.info("closing banned volunteer %s the hard way: %s", link.name, exc)
        await link.channel.close(error.close_code, "banned")


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); :class:`ConfigError` for anything else."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def _plain_errors(handler: Handler) -> Handler:
    """Answer every failure of ``handler`` with the plain JSON error shape and its status."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge: everything becomes a JSON error
            status, body, headers = plain_error(exc)
            if status >= 500:
                log.warning("%s %s failed: %s", request.method, request.path, exc, exc_info=not isinstance(exc, ButterflyError))
            return web.json_response(body, status=status, headers=headers)

    return wrapped
