"""The coordinator's persistent pool state: one SQLite file in its data dir.

:class:`SqlitePoolRegistry` answers the same calls as the in-memory
:class:`server.registry.PoolRegistry` (``member``, ``members``, ``is_banned``,
``admit``) and keeps, across restarts: members with their contribution counters,
invites with their labels, use counts and revocations, bans, and pool metadata.

The file uses WAL journaling and foreign keys; every write runs in its own
``BEGIN IMMEDIATE`` transaction, so concurrent writers (threads, or a second process
such as ``butterfly invite``) are serialised by SQLite itself, and a counted invite
use can never be lost or doubled. The schema carries a version and migrates forward
on open. Every SQLite or file-system failure becomes a :class:`StoreError` whose
hint names the file and the fix.
"""

from __future__ import annotations

import enum
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from core.errors import AuthFailed, ConfigError, StoreError
from core.identity import Invite
from core.types import NodeId
from server.registry import Member

DB_FILE_NAME = "pool.sqlite3"
APPLICATION_ID = 0x42464C59  # b"BFLY": marks the file as a Butterfly pool database
DEFAULT_BUSY_TIMEOUT_S = 5.0


# --- schema -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """The SQL statements that take the schema from ``version - 1`` to ``version``."""

    version: int
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE meta (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )""",
            """CREATE TABLE invites (
                invite_id TEXT PRIMARY KEY,
                pool_name TEXT NOT NULL,
                created_at REAL,
                expires_at REAL NOT NULL,
                max_uses INTEGER CHECK (max_uses IS NULL OR max_uses >= 1),
                uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND (max_uses IS NULL OR uses <= max_uses)),
                revoked_at REAL
            )""",
            """CREATE TABLE members (
                node_id TEXT PRIMARY KEY,
                public_key BLOB NOT NULL,
                name TEXT NOT NULL,
                first_joined REAL NOT NULL,
                last_seen REAL NOT NULL,
                invite_id TEXT REFERENCES invites (invite_id),
                steps INTEGER NOT NULL DEFAULT 0 CHECK (steps >= 0),
                tokens INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
                compute_s REAL NOT NULL DEFAULT 0 CHECK (compute_s >= 0),
                bytes_in INTEGER NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
                bytes_out INTEGER NOT NULL DEFAULT 0 CHECK (bytes_out >= 0)
            )""",
            "CREATE INDEX members_by_invite ON members (invite_id)",
            """CREATE TABLE bans (
                node_id TEXT PRIMARY KEY,
                reason TEXT NOT NULL,
                banned_at REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        (
            # the host's note on an invite ("for Alice's laptop"); NULL: none
            "ALTER TABLE invites ADD COLUMN label TEXT",
        ),
    ),
)

MAX_LABEL_CHARS = 200


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contribution:
    """Work a volunteer did for the pool; counters only ever grow. Supports ``+``."""

    steps: int = 0
    tokens: int = 0
    compute_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    def __post_init__(self) -> None:
        for field in ("steps", "tokens", "bytes_in", "bytes_out"):
            value = getattr(self, field)
            if type(value) is not int or value < 0:
                raise ValueError(f"contribution {field} must be a non-negative int, got {value!r}")
        if not (isinstance(self.compute_s, (int, float)) and math.isfinite(self.compute_s) and self.compute_s >= 0):
            raise ValueError(f"contribution compute_s must be a finite non-negative number, got {self.compute_s!r}")

    def __add__(self, other: Contribution) -> Contribution:
        return Contribution(
            self.steps + other.steps,
            self.tokens + other.tokens,
            self.compute_s + other.compute_s,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member as stored: who it is, when it joined and was last seen, what it contributed.

    ``invite_id`` is the invite it first joined with (None: admitted without one).
    """

    node_id: NodeId
    public_key: bytes
    name: str
    first_joined: float
    last_seen: float
    invite_id: str | None
    contribution: Contribution


class InviteState(enum.Enum):
    """Whether an invite still admits new volunteers, and if not, why."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    USED_UP = "used-up"


def invite_state(*, expires_at: float, max_uses: int | None, uses: int, revoked_at: float | None, now: float) -> InviteState:
    """The state of an invite at ``now``. A revocation wins over a use limit, which wins over expiry."""
    if revoked_at is not None:
        return InviteState.REVOKED
    if max_uses is not None and uses >= max_uses:
        return InviteState.USED_UP
    if now >= expires_at:
        return InviteState.EXPIRED
    return InviteState.ACTIVE


@dataclass(frozen=True, slots=True)
class InviteRecord:
    """An invite as stored, with its state at the time it was read.

    ``created_at`` is None for an invite first seen when a volunteer used it; ``label``
    is the host's note on it (None: none).
    """

    invite_id: str
    pool_name: str
    created_at: float | None
    expires_at: float
    max_uses: int | None
    uses: int
    revoked_at: float | None
    state: InviteState
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Ban:
    """A volunteer key refused by the pool, with the host's reason."""

    node_id: NodeId
    reason: str
    banned_at: float


def iso_time(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as ISO 8601 UTC to the second."""
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


# --- errors -----------------------------------------------------------------------------


def store_error(exc: sqlite3.Error | OSError, path: Path, doing: str) -> StoreError:
    """A :class:`StoreError` for ``exc`` raised while ``doing`` something with the database at ``path``."""
    if isinstance(exc, OSError):
        return StoreError(
            f"cannot {doing} the pool database {path}: {exc.strerror or exc}",
            hint=f"make {path.parent} an existing folder writable by this user, or pass another --data-dir",
        )
    # e.g. SQLITE_READONLY_DBMOVED -> READONLY
    primary = (getattr(exc, "sqlite_errorname", "") or "").removeprefix("SQLITE_").split("_")[0]
    text = str(exc)
    if isinstance(exc, sqlite3.ProgrammingError):
        hint = "the pool database was used after it was closed; restart the coordinator"
    elif primary == "FULL" or "database or disk is full" in text:
        hint = f"free disk space on the drive holding {path.parent}, then retry"
    elif primary in ("BUSY", "LOCKED") or "database is locked" in text:
        hint = (f"another process is writing {path}; is a second coordinator running with the same "
                "data dir? Stop it or pass another --data-dir")
    elif primary == "READONLY" or "readonly" in text:
        hint = f"make {path} and its folder {path.parent} writable by this user, or pass another --data-dir"
    elif primary == "CANTOPEN" or "unable to open" in text:
        hint = f"check that {path.parent} exists and is writable by this user, or pass another --data-dir"
    elif primary in ("NOTADB", "CORRUPT") or "not a database" in text or "malformed" in text:
        hint = (f"{path} is damaged: restore it from a backup, or move it aside to start an empty pool "
                "(volunteers then need new invites)")
    else:
        hint = f"check {path} and the disk it is on"
    return StoreError(f"cannot {doing} the pool database {path}: {text}", hint=hint)


# --- the store --------------------------------------------------------------------------


class SqlitePoolRegistry:
    """Members, invites, bans and pool metadata in one SQLite file; survives restarts.

    A drop-in for :class:`server.registry.PoolRegistry`. Thread-safe: one connection
    guarded by a lock; each call is one short statement or transaction. Opening
    creates the file (and its folder), checks its integrity and migrates the schema
    forward; any failure raises :class:`StoreError`. Call :meth:`close` when done (or
    use it as a context manager).
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._migrations = tuple(migrations)
        if [m.version for m in self._migrations] != list(range(1, len(self._migrations) + 1)):
            raise ValueError("migrations must be numbered 1, 2, 3, … in order")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # created private; SQLite gives its -wal/-shm files the same mode
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise store_error(exc, self.path, "create") from exc
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "open") from exc
        try:
            self._prepare()
        except sqlite3.Error as exc:
            self._conn.close()
            raise store_error(exc, self.path, "open") from exc
        except StoreError:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA foreign_keys = ON")
        # With WAL, NORMAL never corrupts the file; a power cut may drop the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StoreError(
                f"the pool database {self.path} is damaged: {'; '.join(problems[:3])}",
                hint=f"restore {self.path} from a backup, or move it aside to start an empty pool "
                     "(volunteers then need new invites)",
            )
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"{self.path} is an SQLite database of another program (application id {app_id:#x})",
                hint="pass a --data-dir of its own to the coordinator",
            )
        self._migrate()

    def _migrate(self) -> None:
        latest = len(self._migrations)
        with self._write():
            conn = self._conn
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > latest:
                raise StoreError(
                    f"the pool database {self.path} has schema version {current}; this Butterfly reads up to {latest}",
                    hint="update Butterfly on this machine (the newer version wrote this file)",
                )
            if current == 0:
                foreign = conn.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name NOT IN ('schema_version') AND name NOT LIKE 'sqlite_%'"
                ).fetchone()[0]
                if foreign:
                    raise StoreError(
                        f"{self.path} already holds tables that are not Butterfly's",
                        hint="pass a --data-dir of its own to the coordinator",
                    )
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for migration in self._migrations[current:]:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (migration.version, time.time()))

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction; rolled back if the body raises. Caller holds no lock."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (e.g. on a full disk)
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _guard(self, doing: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, in a transaction when ``write``; SQLite errors become StoreError."""
        with self._lock:
            try:
                if write:
                    with self._write():
                        yield self._conn
                else:
                    yield self._conn
            except sqlite3.Error as exc:
                raise store_error(exc, self.path, doing) from exc

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        with self._guard("read", write=False) as conn:
            return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    def close(self) -> None:
        """Close the file (WAL contents are checkpointed into it). Later calls raise StoreError."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqlitePoolRegistry:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def backup(self, destination: Path) -> None:
        """Write a consistent copy of the whole database to ``destination`` while the pool runs."""
        try:
            target = sqlite3.connect(destination)
        except sqlite3.Error as exc:
            raise store_error(exc, Path(destination), "create") from exc
        try:
            with self._guard("back up", write=False) as conn:
                conn.backup(target)
        finally:
            target.close()

    # --- the PoolRegistry interface ----------------------------------------------------

    def member(self, node_id: NodeId) -> Member | None:
        """The member with ``node_id``, or None if that key never joined."""
        record = self.member_record(node_id)
        return None if record is None else _as_member(record)

    def members(self) -> list[Member]:
        """Every member, in order of first joining."""
        return [_as_member(r) for r in self.member_records()]

    def is_banned(self, node_id: NodeId) -> bool:
        """Whether ``node_id`` is banned."""
        with self._guard("read", write=False) as conn:
            return conn.execute("SELECT 1 FROM bans WHERE node_id = ?", (node_id,)).fetchone() is not None

    def admit(self, member: Member, invite: Invite | None) -> None:
        """Record ``member`` (``joined_at`` is the time of this join); count one use of ``invite``.

        A known member's name and last-seen time are updated and no invite use is
        counted. A new member with an invite takes one use of it, atomically: a revoked
        or used-up invite raises :class:`AuthFailed` and nothing is recorded. A banned
        key raises :class:`AuthFailed`. An invite this database has not seen yet
        (signed by the pool elsewhere) is recorded on first use.
        """
        with self._guard("record a member in", write=True) as conn:
            if conn.execute("SELECT 1 FROM bans WHERE node_id = ?", (member.node_id,)).fetchone():
                raise AuthFailed("this volunteer key is banned from the pool", hint="ask the host")
            known = conn.execute(
                "UPDATE members SET name = ?, last_seen = MAX(last_seen, ?) WHERE node_id = ?",
                (member.name, member.joined_at, member.node_id),
            ).rowcount
            if known:
                return
            invite_id = None
            if invite is not None:
                _take_invite_use(conn, invite)
                invite_id = invite.invite_id
            conn.execute(
                "INSERT INTO members (node_id, public_key, name, first_joined, last_seen, invite_id) VALUES (?, ?, ?, ?, ?, ?)",
                (member.node_id, member.public_key, member.name, member.joined_at, member.joined_at, invite_id),
            )

    # --- members -----------------------------------------------------------------------

    def member_record(self, node_id: NodeId) -> MemberRecord | None:
        """The stored record of ``node_id`` with its counters, or None."""
        with self._guard("read", write=False) as conn:
            row = conn.execute(f"SELECT {_MEMBER_COLUMNS} FROM members WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else _member_record(row)

    def member_records(self) -> list[MemberRecord]:
        """Every member's record, in order of first joining."""
        with self._guard("read", write=False) as conn:
            rows = conn.execute(f"SELECT {_MEMBER_COLUMNS} FROM members ORDER BY first_joined, node_id").fetchall()
        return [_member_record(row) for row in rows]

    def touch(self, node_id: NodeId, now: float) -> bool:
        """Mark ``node_id`` as seen at ``now`` (never moves backwards); False if it is not a member."""
        with self._guard("update", write=True) as conn:
            return conn.execute(
                "UPDATE members SET last_seen = MAX(last_seen, ?) WHERE node_id = ?", (now, node_id)
            ).rowcount == 1

    def record_contribution(
        self, node_id: NodeId, *, steps: int, tokens: int, compute_s: float, bytes_in: int, bytes_out: int
    ) -> bool:
        """Add to ``node_id``'s counters; False (nothing recorded) if it is not a member.

        Raises ValueError for a negative or non-finite amount.
        """
        unknown = self.record_contributions({node_id: Contribution(steps, tokens, compute_s, bytes_in, bytes_out)})
        return not unknown

    def record_contributions(self, batch: Mapping[NodeId, Contribution]) -> list[NodeId]:
        """Add every contribution in ``batch`` in one transaction; returns the ids that are not members (skipped)."""
        unknown: list[NodeId] = []
        with self._guard("update", write=True) as conn:
            for node_id, c in batch.items():
                updated = conn.execute(
                    "UPDATE members SET steps = steps + ?, tokens = tokens + ?, compute_s = compute_s + ?, "
                    "bytes_in = bytes_in + ?, bytes_out = bytes_out + ? WHERE node_id = ?",
                    (c.steps, c.tokens, float(c.compute_s), c.bytes_in, c.bytes_out, node_id),
                ).rowcount
                if not updated:
                    unknown.append(node_id)
        return unknown

    # --- invites -----------------------------------------------------------------------

    def record_invite(self, invite: Invite, *, created_at: float, label: str | None = None) -> None:
        """Remember an invite the pool just issued (its uses start at 0), with the host's ``label``.

        Recording an invite again keeps its uses and revocation, fills in ``created_at``
        if it was first seen in use, and keeps its label unless a new one is given.
        Raises :class:`ConfigError` for a label over :data:`MAX_LABEL_CHARS` characters.
        """
        label = _clean_label(label)
        with self._guard("record an invite in", write=True) as conn:
            conn.execute(
                "INSERT INTO invites (invite_id, pool_name, created_at, expires_at, max_uses, label) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (invite_id) DO UPDATE SET created_at = COALESCE(invites.created_at, excluded.created_at), "
                "label = COALESCE(excluded.label, invites.label)",
                (invite.invite_id, invite.pool_name, created_at, invite.expires_at, invite.max_uses, label),
            )

    def find_invite(self, id_or_prefix: str, now: float) -> InviteRecord:
        """The one invite whose id is, or starts with, ``id_or_prefix`` (state at ``now``).

        Raises :class:`ConfigError` when no invite or more than one matches.
        """
        wanted = id_or_prefix.strip()
        matches = [r for r in self.list_invites(now) if wanted and r.invite_id.startswith(wanted)]
        exact = [r for r in matches if r.invite_id == wanted]
        if exact:
            return exact[0]
        if len(matches) != 1:
            what = f"this pool has no invite {id_or_prefix!r}" if not matches else f"{len(matches)} invites start with {wanted!r}"
            raise ConfigError(what, hint="list the invites (butterfly invite list) and give more of the id")
        return matches[0]

    def invite_uses(self, invite_id: str) -> int:
        """How many volunteers joined with ``invite_id`` (0 for an unknown id)."""
        with self._guard("read", write=False) as conn:
            row = conn.execute("SELECT uses FROM invites WHERE invite_id = ?", (invite_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def invite(self, invite_id: str, now: float) -> InviteRecord | None:
        """The stored invite ``invite_id`` with its state at ``now``, or None."""
        with self._guard("read", write=False) as conn:
            row = conn.execute(f"SELECT {_INVITE_COLUMNS} FROM invites WHERE invite_id = ?", (invite_id,)).fetchone()
        return None if row is None else _invite_record(row, now)

    def list_invites(self, now: float) -> list[InviteRecord]:
        """Every invite with its state at ``now``, oldest first (those first seen in use last)."""
        with self._guard("read", write=False) as conn:
            rows = conn.execute(
                f"SELECT {_INVITE_COLUMNS} FROM invites ORDER BY created_at IS NULL, created_at, invite_id"
            ).fetchall()
        return [_invite_record(row, now) for row in rows]

    def revoke_invite(self, invite_id: str, now: float) -> InviteRecord:
        """Stop ``invite_id`` admitting new volunteers from ``now`` on; members it admitted stay.

        Revoking twice keeps the first time. Raises :class:`ConfigError` for an unknown id.
        """
        with self._guard("revoke an invite in", write=True) as conn:
            conn.execute(
                "UPDATE invites SET revoked_at = COALESCE(revoked_at, ?) WHERE invite_id = ?", (now, invite_id)
            )
            row = conn.execute(f"SELECT {_INVITE_COLUMNS} FROM invites WHERE invite_id = ?", (invite_id,)).fetchone()
            if row is None:
                raise ConfigError(f"this pool has no invite {invite_id!r}", hint="list the pool's invites to find its id")
        return _invite_record(row, now)

    # --- bans --------------------------------------------------------------------------

    def ban(self, node_id: NodeId, reason: str, now: float) -> None:
        """Refuse ``node_id`` from now on (member or not). Banning again updates the reason only."""
        with self._guard("record a ban in", write=True) as conn:
            conn.execute(
                "INSERT INTO bans (node_id, reason, banned_at) VALUES (?, ?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET reason = excluded.reason",
                (node_id, reason, now),
            )

    def unban(self, node_id: NodeId) -> bool:
        """Lift the ban on ``node_id``; False if it was not banned."""
        with self._guard("lift a ban in", write=True) as conn:
            return conn.execute("DELETE FROM bans WHERE node_id = ?", (node_id,)).rowcount == 1

    def bans(self) -> list[Ban]:
        """Every ban, oldest first."""
        with self._guard("read", write=False) as conn:
            rows = conn.execute("SELECT node_id, reason, banned_at FROM bans ORDER BY banned_at, node_id").fetchall()
        return [Ban(NodeId(n), r, float(t)) for n, r, t in rows]

    def find_node(self, id_or_prefix: str, *, also: Sequence[NodeId] = ()) -> NodeId:
        """The one volunteer id that is, or starts with, ``id_or_prefix``.

        Candidates are the members, the banned keys and ``also`` (e.g. the volunteers
        connected right now). A whole, well-formed fingerprint is returned as it is even
        when the pool has never seen it, so a key can be banned before it joins. Raises
        :class:`ConfigError` when nothing or more than one id matches.
        """
        wanted = id_or_prefix.strip().lower()
        if _FINGERPRINT.fullmatch(wanted):
            return NodeId(wanted)
        with self._guard("read", write=False) as conn:
            known = {row[0] for row in conn.execute("SELECT node_id FROM members UNION SELECT node_id FROM bans")}
        known.update(also)
        matches = sorted(n for n in known if wanted and n.startswith(wanted))
        if len(matches) != 1:
            what = (f"this pool knows no volunteer {id_or_prefix!r}" if not matches
                    else f"{len(matches)} volunteers' fingerprints start with {wanted!r}")
            raise ConfigError(what, hint="list the volunteers (butterfly volunteers list) and give more of the fingerprint")
        return NodeId(matches[0])

    # --- pool metadata -----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """The stored value of ``key`` (e.g. ``pool_name``, ``model_id``, ``created_at``), or None."""
        with self._guard("read", write=False) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        if not isinstance(value, str):
            raise TypeError(f"pool metadata values are text, got {type(value).__name__}")
        with self._guard("write", write=True) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def __repr__(self) -> str:
        return f"SqlitePoolRegistry({str(self.path)!r})"


# --- row mapping ------------------------------------------------------------------------

_MEMBER_COLUMNS = (
    "node_id, public_key, name, first_joined, last_seen, invite_id, steps, tokens, compute_s, bytes_in, bytes_out"
)
_INVITE_COLUMNS = "invite_id, pool_name, created_at, expires_at, max_uses, uses, revoked_at, label"
_FINGERPRINT = re.compile(r"bf1[a-z2-7]{26}")


def _clean_label(label: str | None) -> str | None:
    if label is None:
        return None
    label = " ".join(label.split())
    if len(label) > MAX_LABEL_CHARS:
        raise ConfigError(f"an invite label has at most {MAX_LABEL_CHARS} characters, got {len(label)}",
                          hint="use a shorter note")
    return label or None


def _take_invite_use(conn: sqlite3.Connection, invite: Invite) -> None:
    """Count one use of ``invite`` inside the caller's transaction, or raise AuthFailed."""
    conn.execute(
        "INSERT INTO invites (invite_id, pool_name, created_at, expires_at, max_uses) VALUES (?, ?, NULL, ?, ?) "
        "ON CONFLICT (invite_id) DO NOTHING",
        (invite.invite_id, invite.pool_name, invite.expires_at, invite.max_uses),
    )
    taken = conn.execute(
        "UPDATE invites SET uses = uses + 1 "
        "WHERE invite_id = ? AND revoked_at IS NULL AND (max_uses IS NULL OR uses < max_uses)",
        (invite.invite_id,),
    ).rowcount
    if taken:
        return
    uses, revoked_at = conn.execute(
        "SELECT uses, revoked_at FROM invites WHERE invite_id = ?", (invite.invite_id,)
    ).fetchone()
    if revoked_at is not None:
        raise AuthFailed(f"invite {invite.invite_id} was revoked at {iso_time(revoked_at)}",
                         hint="ask the host for a new invite")
    raise AuthFailed(f"invite {invite.invite_id} has already been used {uses} time(s), its limit",
                     hint="ask the host for a new invite")


def _member_record(row: tuple[Any, ...]) -> MemberRecord:
    node_id, public_key, name, first_joined, last_seen, invite_id, steps, tokens, compute_s, bytes_in, bytes_out = row
    return MemberRecord(
        NodeId(node_id), bytes(public_key), name, float(first_joined), float(last_seen), invite_id,
        Contribution(int(steps), int(tokens), float(compute_s), int(bytes_in), int(bytes_out)),
    )


def _as_member(record: MemberRecord) -> Member:
    return Member(record.node_id, record.public_key, record.name, record.first_joined)


def _invite_record(row: tuple[Any, ...], now: float) -> InviteRecord:
    invite_id, pool_name, created_at, expires_at, max_uses, uses, revoked_at, label = row
    state = invite_state(expires_at=expires_at, max_uses=max_uses, uses=uses, revoked_at=revoked_at, now=now)
    return InviteRecord(invite_id, pool_name, created_at, float(expires_at), max_uses, int(uses), revoked_at, state, label)


__all__ = [
    "APPLICATION_ID",
    "DB_FILE_NAME",
    "MAX_LABEL_CHARS",
    "MIGRATIONS",
    "Ban",
    "Contribution",
    "InviteRecord",
    "InviteState",
    "MemberRecord",
    "Migration",
    "SqlitePoolRegistry",
    "invite_state",
    "iso_time",
    "store_error",
]
