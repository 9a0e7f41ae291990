"""``butterfly apikey create|list|revoke``: manage the API keys of a pool hosted on this machine.

Keys live (hashed) in the coordinator's data dir; a running coordinator picks up changes
at once. While any key is active, the pool's ``/v1`` API requires one.
"""

from __future__ import annotations

import argparse
import sys
import time

from server.api.keys import KEYS_FILE, KeyStore
from server.config import default_data_dir


def run_apikey(args: argparse.Namespace) -> int:
    """Dispatch ``create``, ``list`` or ``revoke``."""
    store = KeyStore((args.data_dir or default_data_dir()) / KEYS_FILE)
    if args.action == "create":
        key, secret = store.create(args.name, now=time.time())
        print(secret)
        print(
            f"created key {key.key_id}{f' ({key.name})' if key.name else ''}; it is shown only now. "
            "Clients send it as 'Authorization: Bearer <key>'.",
            file=sys.stderr,
        )
        return 0
    if args.action == "revoke":
        key = store.revoke(args.key_id, now=time.time())
        print(f"revoked key {key.key_id}{f' ({key.name})' if key.name else ''}")
        return 0
    keys = store.list()
    if not keys:
        print("no API keys: the pool's API is open to anyone who can reach it")
        return 0
    rows = [("ID", "NAME", "KEY", "CREATED", "STATE")]
    for key in keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created_at))
        state = "active" if key.active else "revoked " + time.strftime("%Y-%m-%d %H:%M", time.localtime(key.revoked_at or 0))
        rows.append((key.key_id, key.name or "–", key.preview + "…", created, state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0
