"""What ``butterfly invite`` and ``butterfly volunteers`` share: where the pool is, and how to reach it.

Both work either on a pool hosted on this machine, through its data dir (SQLite and the
pool key, like ``butterfly apikey``), or on a running coordinator over HTTP with
``--url http(s)://host:port`` and its admin key (``--admin-key``, ``$BUTTERFLY_ADMIN_KEY``,
or the ``admin.key`` file in the data dir when the coordinator runs on this machine).
Over https the server must prove it holds the pool key (``--pool-id``, or the pool key in
the data dir) before the admin key is sent.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from core.errors import AuthFailed, ConfigError, PoolUnavailable

ADMIN_KEY_ENV = "BUTTERFLY_ADMIN_KEY"
POOL_ID_ENV = "BUTTERFLY_POOL_ID"
POOL_KEY_FILE = "pool_key.pem"
HTTP_TIMEOUT_S = 30.0


def add_target_args(p: argparse.ArgumentParser, *, suppress: bool = False, url_help: str | None = None) -> None:
    """Add ``--data-dir``, ``--url``, ``--admin-key`` and ``--pool-id`` to ``p``.

    ``suppress`` leaves the value unset unless given, so a sub-command does not override
    what its parent command already parsed.
    """
    default: Any = argparse.SUPPRESS if suppress else None
    p.add_argument("--data-dir", type=Path, default=default,
                   help="the coordinator's data dir (default: the platform data dir)")
    p.add_argument("--url", default=default, help=url_help or "a running coordinator's http(s):// address, to work "
                                                              "through its admin API (default: the pool in the data dir)")
    p.add_argument("--admin-key", default=default,
                   help=f"the coordinator's admin key (default: ${ADMIN_KEY_ENV}, or admin.key in the data dir)")
    p.add_argument("--pool-id", default=default,
                   help="the pool id (bf1…) an https:// coordinator must prove (default: from the data dir)")


@dataclass(frozen=True, slots=True)
class Target:
    """A pool to administer: its data dir here, and the HTTP address of its running coordinator if given."""

    data_dir: Path
    url: str | None


def target_of(args: argparse.Namespace) -> Target:
    """The pool ``args`` name; a ``--url`` that is not http(s) is left for the caller (an invite's address)."""
    from server.config import default_data_dir

    data_dir = getattr(args, "data_dir", None) or default_data_dir()
    url = getattr(args, "url", None)
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        url = None
    return Target(Path(data_dir), url.rstrip("/") if url else None)


def require_local_pool(data_dir: Path) -> Path:
    """The pool key path in ``data_dir``; :class:`ConfigError` if no coordinator ever ran there."""
    key_path = data_dir / POOL_KEY_FILE
    if not key_path.exists():
        raise ConfigError(
            f"no pool key at {key_path}",
            hint="start `butterfly coordinator` once on this machine (or pass its --data-dir), "
                 "or reach a running one with --url http://host:port --admin-key KEY",
        )
    return key_path


def on_local_pool(target: Target, work: Callable[[Any, float], Any]) -> Any:
    """``work(registry, now)`` on the pool database in the target's data dir; its result.

    ``registry`` is a :class:`server.db.SqlitePoolRegistry`, closed afterwards.
    """
    from server.db import DB_FILE_NAME, SqlitePoolRegistry

    require_local_pool(target.data_dir)
    with SqlitePoolRegistry(target.data_dir / DB_FILE_NAME) as registry:
        return work(registry, time.time())


def path_part(text: str) -> str:
    """``text`` quoted as one URL path segment."""
    return quote(text.strip(), safe="")


def admin_key_of(args: argparse.Namespace, target: Target) -> str:
    """The admin key from ``--admin-key``, the environment, or the data dir's ``admin.key``."""
    from server.api.admin import ADMIN_KEY_FILE

    key = getattr(args, "admin_key", None) or os.environ.get(ADMIN_KEY_ENV)
    if key:
        return key.strip()
    path = target.data_dir / ADMIN_KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError(
            f"talking to {target.url} needs the pool's admin key",
            hint=f"pass --admin-key (or set ${ADMIN_KEY_ENV}); the coordinator prints where it keeps the key when it starts",
        ) from None


def _expected_pool_id(args: argparse.Namespace, target: Target) -> str:
    pinned = getattr(args, "pool_id", None) or os.environ.get(POOL_ID_ENV)
    if pinned:
        return pinned.strip()
    key_path = target.data_dir / POOL_KEY_FILE
    if key_path.exists():
        from core.identity import Identity

        return Identity.load_or_create(key_path).fingerprint
    raise ConfigError(
        f"cannot check that {target.url} is your pool before sending it the admin key",
        hint=f"pass --pool-id bf1… or set ${POOL_ID_ENV} (the coordinator prints the pool id when it starts), "
             "or --data-dir of the pool",
    )


def admin_call(args: argparse.Namespace, target: Target, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """``method`` ``path`` (under ``/api/admin``) on the target's coordinator; the decoded JSON answer.

    Raises :class:`AuthFailed` for a refused key or an https server without the pool key,
    :class:`ConfigError` for a refused request and :class:`PoolUnavailable` when the
    coordinator cannot be reached or fails.
    """
    assert target.url is not None
    key = admin_key_of(args, target)
    parts = urlsplit(target.url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        if parts.scheme == "https":
            from core.tls import check_pin, client_context, peer_pool_id

            expected = _expected_pool_id(args, target)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, context=client_context(), timeout=HTTP_TIMEOUT_S
            )
            conn.connect()
            check_pin(peer_pool_id(conn.sock), expected, where=target.url)  # type: ignore[arg-type]
        else:
            conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, parts.path + "/api/admin" + path, body=data, headers=headers)
        response = conn.getresponse()
        status, raw = response.status, response.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise PoolUnavailable(f"cannot reach the coordinator at {target.url}: {exc}", hint="is it running? check --url") from None
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {"error": raw.decode(errors="replace")[:200]}
    if status < 400:
        return answer
    message = str(answer.get("error", f"HTTP {status}")) if isinstance(answer, dict) else f"HTTP {status}"
    hint = answer.get("hint") if isinstance(answer, dict) else None
    if status == 401:
        raise AuthFailed(f"the coordinator refused the admin key: {message}", hint=hint)
    if status < 500:
        raise ConfigError(f"the coordinator refused: {message}", hint=hint)
    raise PoolUnavailable(f"the coordinator failed ({status}): {message}", hint=hint)


def when(timestamp: float | None) -> str:
    """``timestamp`` as local ``YYYY-MM-DD HH:MM``, or "–"."""
    return "–" if timestamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the first is the header) as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
