"""``butterfly invite create|list|revoke``: the invites of a pool.

``butterfly invite [--ttl 24h] [--uses N] [--label TEXT]`` with no action is ``invite create``.
From the data dir, ``--url`` may give the ws(s):// address the invite points volunteers
at; with ``--url http(s)://host:port`` the running coordinator makes, lists and revokes
invites through its admin API (and points invites at its own address). See
:mod:`cli.admin` for how the pool and its admin key are found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cli.admin import (
    Target,
    add_target_args,
    admin_call,
    on_local_pool,
    path_part,
    print_table,
    require_local_pool,
    target_of,
    when,
)

DEFAULT_ADDRESS = "wss://127.0.0.1:8765/ws"
"""Where an invite made from the data dir points volunteers unless ``--url`` says otherwise."""
URL_HELP = (
    "a running coordinator's http(s):// address, to work through its admin API; or the ws(s):// address "
    f"an invite made from the data dir points volunteers at (default {DEFAULT_ADDRESS})"
)


def add_invite_args(p: argparse.ArgumentParser) -> None:
    """The options of ``butterfly invite`` and its actions (``create`` is the default)."""
    _add_create_args(p, suppress=False)
    add_target_args(p, url_help=URL_HELP)
    actions = p.add_subparsers(dest="action", metavar="{create,list,revoke}")
    c = actions.add_parser("create", help="make an invite and print it (the default action)")
    _add_create_args(c, suppress=True)
    add_target_args(c, suppress=True, url_help=URL_HELP)
    c = actions.add_parser("list", help="list invites: label, expiry, uses and state")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_target_args(c, suppress=True)
    c = actions.add_parser("revoke", help="stop an invite admitting anyone new (members it admitted stay)")
    c.add_argument("invite_id", help="the invite's id, or a unique start of it (see `butterfly invite list`)")
    add_target_args(c, suppress=True)


def _add_create_args(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--ttl", default=default("24h"), help="how long the invite is valid (default 24h)")
    p.add_argument("--uses", type=int, default=default(None), help="how many volunteers may join with it (default unlimited; 1 = single use)")
    p.add_argument("--label", "--note", dest="label", default=default(None), help="a note to tell invites apart, e.g. who it is for")
    p.add_argument("--pool-name", default=default("Butterfly pool"), help="the pool name an invite from the data dir shows")


def run_invite(args: argparse.Namespace) -> int:
    """Dispatch ``create`` (also when no action is given), ``list`` or ``revoke``."""
    action = getattr(args, "action", None) or "create"
    target = target_of(args)
    if action == "create":
        return _create(args, target)
    if action == "revoke":
        return _revoke(args, target)
    return _list(args, target)


def _create(args: argparse.Namespace, target: Target) -> int:
    from cli.main import parse_duration
    from core.identity import invite_link

    ttl_s = parse_duration(args.ttl)
    if target.url is not None:
        answer = admin_call(args, target, "POST", "/invites", {"ttl_s": ttl_s, "max_uses": args.uses, "label": args.label})
        token, invite = answer["token"], answer["invite"]
    else:
        from core.identity import Identity, parse_invite
        from server.admission import issue_invite
        from server.api.admin_view import invite_view
        from server.db import DB_FILE_NAME, SqlitePoolRegistry

        key_path = require_local_pool(target.data_dir)
        address = args.url or DEFAULT_ADDRESS
        now = time.time()
        with SqlitePoolRegistry(target.data_dir / DB_FILE_NAME) as registry:
            token = issue_invite(
                Identity.load_or_create(key_path), registry, pool_name=args.pool_name, addresses=[address],
                ttl_s=ttl_s, max_uses=args.uses, now=now, label=args.label,
            )
            record = registry.invite(parse_invite(token).invite_id, now)
            assert record is not None  # just recorded
            invite = invite_view(record)
    print(token)
    print(invite_link(token), file=sys.stderr)
    uses = "unlimited uses" if invite["max_uses"] is None else f"{invite['max_uses']} use(s)"
    label = f" ({invite['label']})" if invite["label"] else ""
    print(f"invite {invite['id']}{label}: {uses}, expires {when(invite['expires_at'])}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace, target: Target) -> int:
    if target.url is not None:
        invites = admin_call(args, target, "GET", "/invites")["invites"]
    else:
        invites = on_local_pool(target, lambda registry, now: [_view(r) for r in registry.list_invites(now)])
    if getattr(args, "json", False):
        print(json.dumps(invites, indent=2))
        return 0
    if not invites:
        print("no invites yet: make one with `butterfly invite create`")
        return 0
    rows = [("ID", "LABEL", "CREATED", "EXPIRES", "USES", "STATE")]
    for i in invites:
        allowed = "∞" if i["max_uses"] is None else str(i["max_uses"])
        rows.append((i["id"], i["label"] or "–", when(i["created_at"]), when(i["expires_at"]), f"{i['uses']}/{allowed}", i["state"]))
    print_table(rows)
    return 0


def _revoke(args: argparse.Namespace, target: Target) -> int:
    if target.url is not None:
        invite = admin_call(args, target, "DELETE", f"/invites/{path_part(args.invite_id)}")["invite"]
    else:
        def revoke(registry: Any, now: float) -> dict[str, Any]:
            return _view(registry.revoke_invite(registry.find_invite(args.invite_id, now).invite_id, now))

        invite = on_local_pool(target, revoke)
    label = f" ({invite['label']})" if invite["label"] else ""
    print(f"revoked invite {invite['id']}{label}; volunteers who joined with it stay members")
    return 0


def _view(record: Any) -> dict[str, Any]:
    from server.api.admin_view import invite_view

    return invite_view(record)
