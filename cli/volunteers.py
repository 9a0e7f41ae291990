"""``butterfly volunteers list|ban|unban``: who lends machines to a pool, and keeping someone out.

From the data dir, a ban is recorded at once and a running coordinator refuses that key
from its next connection on; through a running coordinator (``--url http(s)://host:port``)
a ban also disconnects the volunteer now. Fingerprints may be shortened to a unique start.
See :mod:`cli.admin` for how the pool and its admin key are found.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.admin import Target, add_target_args, admin_call, on_local_pool, path_part, print_table, target_of, when


def add_volunteers_args(p: argparse.ArgumentParser) -> None:
    """The actions of ``butterfly volunteers`` and their options."""
    add_target_args(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,ban,unban}")
    c = actions.add_parser("list", help="list volunteers: fingerprint, first/last seen, contribution, state")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_target_args(c, suppress=True)
    c = actions.add_parser("ban", help="refuse a volunteer key from now on (and disconnect it, with --url)")
    c.add_argument("node_id", metavar="FINGERPRINT", help="the volunteer's fingerprint (bf1…) or a unique start of it")
    c.add_argument("--reason", default=None, help="why (the volunteer is told, and the list shows it)")
    add_target_args(c, suppress=True)
    c = actions.add_parser("unban", help="lift a ban")
    c.add_argument("node_id", metavar="FINGERPRINT", help="the volunteer's fingerprint (bf1…) or a unique start of it")
    add_target_args(c, suppress=True)


def run_volunteers(args: argparse.Namespace) -> int:
    """Dispatch ``list``, ``ban`` or ``unban``."""
    target = target_of(args)
    if args.action == "ban":
        return _ban(args, target)
    if args.action == "unban":
        return _unban(args, target)
    return _list(args, target)


def _list(args: argparse.Namespace, target: Target) -> int:
    if target.url is not None:
        volunteers = admin_call(args, target, "GET", "/volunteers")["volunteers"]
    else:
        from server.api.admin_view import volunteer_views

        volunteers = on_local_pool(
            target, lambda r, now: volunteer_views(r.member_records(), r.bans(), connected=None, now=now)
        )
    if getattr(args, "json", False):
        print(json.dumps(volunteers, indent=2))
        return 0
    if not volunteers:
        print("no volunteers yet: invite some with `butterfly invite create`")
        return 0
    rows = [("NAME", "FINGERPRINT", "FIRST SEEN", "LAST SEEN", "TOKENS", "STEPS", "IN/OUT", "STATE")]
    for v in volunteers:
        c = v["contribution"]
        state = v["state"] + (f": {v['ban_reason']}" if v["banned"] and v["ban_reason"] else "")
        rows.append((
            v["name"] or "–", v["node_id"], when(v["first_seen"]), when(v["last_seen"]),
            str(c["tokens"]), str(c["steps"]), f"{_size(c['bytes_in'])}/{_size(c['bytes_out'])}", state,
        ))
    print_table(rows)
    if target.url is None:
        print("(read from the data dir: pass --url to see who is connected now)", file=sys.stderr)
    return 0


def _ban(args: argparse.Namespace, target: Target) -> int:
    reason = args.reason
    if target.url is not None:
        answer = admin_call(args, target, "POST", f"/volunteers/{path_part(args.node_id)}/ban", {"reason": reason})
        volunteer, disconnected = answer["volunteer"], answer["disconnected"]
        node_id = volunteer["node_id"] if volunteer else args.node_id
        print(f"banned {_who(volunteer, node_id)}" + ("; disconnected it" if disconnected else "; it is not connected"))
        return 0
    from server.api.admin import DEFAULT_BAN_REASON

    def ban(registry: Any, now: float) -> str:
        node_id = registry.find_node(args.node_id)
        registry.ban(node_id, " ".join((reason or DEFAULT_BAN_REASON).split()), now)
        return node_id

    node_id = on_local_pool(target, ban)
    print(f"banned {node_id}; a running coordinator refuses it from its next connection "
          "(pass --url to disconnect it now)")
    return 0


def _unban(args: argparse.Namespace, target: Target) -> int:
    if target.url is not None:
        answer = admin_call(args, target, "DELETE", f"/volunteers/{path_part(args.node_id)}/ban")
        node_id = answer["volunteer"]["node_id"] if answer["volunteer"] else args.node_id
        was_banned = answer["was_banned"]
    else:
        def unban(registry: Any, now: float) -> tuple[str, bool]:
            node_id = registry.find_node(args.node_id)
            return node_id, registry.unban(node_id)

        node_id, was_banned = on_local_pool(target, unban)
    print(f"lifted the ban on {node_id}" if was_banned else f"{node_id} was not banned")
    return 0


def _who(volunteer: dict[str, Any] | None, node_id: str) -> str:
    if volunteer and volunteer.get("name"):
        return f"{volunteer['name']} ({node_id})"
    return node_id


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
