"""The pool's invites and volunteers as plain JSON data, for the admin API and the CLI.

Pure: records in, dictionaries out. The same shapes come back from
``GET /api/admin/invites`` and ``/api/admin/volunteers`` and from the CLI reading a data
dir directly, so ``butterfly invite list`` and ``butterfly volunteers list`` print one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.types import NodeId
from server.db import Ban, InviteRecord, InviteState, MemberRecord

STATE_WORDS = {
    InviteState.ACTIVE: "active",
    InviteState.EXPIRED: "expired",
    InviteState.USED_UP: "used up",
    InviteState.REVOKED: "revoked",
}


def invite_view(record: InviteRecord) -> dict[str, Any]:
    """One invite: ``id``, ``label``, ``pool_name``, times (epoch seconds or None), ``uses``, ``max_uses`` and ``state``.

    ``state`` is one of "active", "expired", "used up", "revoked".
    """
    return {
        "id": record.invite_id,
        "label": record.label,
        "pool_name": record.pool_name,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "uses": record.uses,
        "max_uses": record.max_uses,
        "revoked_at": record.revoked_at,
        "state": STATE_WORDS[record.state],
    }


def volunteer_views(
    members: Sequence[MemberRecord],
    bans: Sequence[Ban],
    *,
    connected: Mapping[NodeId, str] | None,
    now: float,
) -> list[dict[str, Any]]:
    """Every member, then every banned key that never joined, with counters and state.

    ``connected`` maps the ids connected right now to their names (None: not known, as
    when reading a data dir without the coordinator). A connected volunteer's
    ``last_seen`` is ``now``. ``state`` is "banned", "connected", "offline" or, when
    connectivity is unknown, "member".
    """
    banned = {b.node_id: b for b in bans}
    rows = []
    for m in members:
        ban = banned.get(m.node_id)
        online = None if connected is None else m.node_id in connected
        rows.append(_row(m.node_id, m.name, m.first_joined, now if online else m.last_seen, m.invite_id, m, ban, online))
    known = {m.node_id for m in members}
    for ban in bans:
        if ban.node_id not in known:
            online = None if connected is None else ban.node_id in connected
            name = (connected or {}).get(ban.node_id, "")
            rows.append(_row(ban.node_id, name, None, None, None, None, ban, online))
    return rows


def _row(
    node_id: NodeId,
    name: str,
    first_seen: float | None,
    last_seen: float | None,
    invite_id: str | None,
    member: MemberRecord | None,
    ban: Ban | None,
    online: bool | None,
) -> dict[str, Any]:
    c = member.contribution if member is not None else None
    if ban is not None:
        state = "banned"
    elif online is None:
        state = "member"
    else:
        state = "connected" if online else "offline"
    return {
        "node_id": node_id,
        "name": name,
        "first_seen": first_seen,
        "last_seen": last_seen,
        "invite_id": invite_id,
        "member": member is not None,
        "contribution": {
            "steps": c.steps if c else 0,
            "tokens": c.tokens if c else 0,
            "compute_s": round(c.compute_s, 3) if c else 0.0,
            "bytes_in": c.bytes_in if c else 0,
            "bytes_out": c.bytes_out if c else 0,
        },
        "connected": online,
        "banned": ban is not None,
        "ban_reason": ban.reason if ban else None,
        "banned_at": ban.banned_at if ban else None,
        "state": state,
    }
