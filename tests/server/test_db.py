"""The SQLite pool registry: same behaviour as the in-memory one, plus persistence and clear failures."""

from __future__ import annotations

import inspect
import os
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import AuthFailed, ConfigError, StoreError
from core.identity import Identity, Invite, create_invite, fingerprint, verify_invite
from core.types import NodeId
from server.db import (
    APPLICATION_ID,
    DB_FILE_NAME,
    MIGRATIONS,
    Contribution,
    InviteState,
    Migration,
    SqlitePoolRegistry,
    invite_state,
)
from server.registry import Member, PoolRegistry

NOW = 1_800_000_000.0
LATEST = len(MIGRATIONS)
POOL = Identity.generate()


def make_invite(*, max_uses: int | None = None, ttl_s: float = 3600, invite_id: str | None = None) -> Invite:
    token = create_invite(POOL, pool_name="test pool", addresses=["ws://127.0.0.1:1/ws"], ttl_s=ttl_s,
                          max_uses=max_uses, now=NOW, invite_id=invite_id)
    return verify_invite(token, pool=POOL, now=NOW)


def make_member(name: str, *, at: float = NOW) -> Member:
    key = Identity.generate().public_key
    return Member(NodeId(fingerprint(key)), key, name, at)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "coordinator" / DB_FILE_NAME


@pytest.fixture
def store(db_path: Path) -> Iterator[SqlitePoolRegistry]:
    with SqlitePoolRegistry(db_path) as s:
        yield s


# --- the registry interface ------------------------------------------------------------


def test_is_a_drop_in_for_the_in_memory_registry() -> None:
    for name, method in inspect.getmembers(PoolRegistry, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(SqlitePoolRegistry, name)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(method).parameters), name


def test_new_file_is_wal_with_foreign_keys_and_the_latest_version(store: SqlitePoolRegistry, db_path: Path) -> None:
    assert store.schema_version == LATEST == 2
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    finally:
        raw.close()
    assert store._conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    if sys.platform != "win32":
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_member_joins_with_invite_then_rejoins_without(store: SqlitePoolRegistry) -> None:
    invite = make_invite(max_uses=1)
    member = make_member("laptop")
    assert store.member(member.node_id) is None
    store.admit(member, invite)
    assert store.member(member.node_id) == member
    assert store.members() == [member]
    assert store.invite_uses(invite.invite_id) == 1
    store.admit(Member(member.node_id, member.public_key, "renamed", NOW + 50), None)
    record = store.member_record(member.node_id)
    assert record is not None
    assert (record.name, record.first_joined, record.last_seen, record.invite_id) == ("renamed", NOW, NOW + 50, invite.invite_id)
    assert store.invite_uses(invite.invite_id) == 1, "a rejoining member takes no invite use"


def test_member_without_invite_is_recorded(store: SqlitePoolRegistry) -> None:
    member = make_member("open pool")
    store.admit(member, None)
    record = store.member_record(member.node_id)
    assert record is not None and record.invite_id is None


def test_used_up_invite_is_refused_and_nothing_recorded(store: SqlitePoolRegistry) -> None:
    invite = make_invite(max_uses=2)
    store.record_invite(invite, created_at=NOW)
    store.admit(make_member("a"), invite)
    store.admit(make_member("b"), invite)
    late = make_member("c")
    with pytest.raises(AuthFailed, match=f"invite {invite.invite_id} has already been used 2 time"):
        store.admit(late, invite)
    assert store.member(late.node_id) is None
    assert store.invite_uses(invite.invite_id) == 2
    assert [r.state for r in store.list_invites(NOW)] == [InviteState.USED_UP]


def test_unlimited_invite_counts_every_use(store: SqlitePoolRegistry) -> None:
    invite = make_invite(max_uses=None)
    for i in range(5):
        store.admit(make_member(f"v{i}"), invite)
    assert store.invite_uses(invite.invite_id) == 5
    assert store.invite_uses("never-issued") == 0


def test_revoked_invite_is_refused_with_the_time(store: SqlitePoolRegistry) -> None:
    invite = make_invite(max_uses=None)
    store.record_invite(invite, created_at=NOW)
    early = make_member("early")
    store.admit(early, invite)
    revoked = store.revoke_invite(invite.invite_id, NOW + 60)
    assert (revoked.state, revoked.revoked_at) == (InviteState.REVOKED, NOW + 60)
    assert store.revoke_invite(invite.invite_id, NOW + 999).revoked_at == NOW + 60, "the first revocation stands"
    with pytest.raises(AuthFailed, match=rf"invite {invite.invite_id} was revoked at 2027-01-15T08:01:00\+00:00") as err:
        store.admit(make_member("late"), invite)
    assert err.value.hint
    assert store.invite_uses(invite.invite_id) == 1
    store.admit(Member(early.node_id, early.public_key, "early", NOW + 70), None)  # members it admitted stay
    with pytest.raises(ConfigError, match="no invite 'nope'"):
        store.revoke_invite("nope", NOW)


def test_list_invites_reports_each_state(store: SqlitePoolRegistry) -> None:
    active = make_invite(invite_id="a-active", ttl_s=7200)
    expired = make_invite(invite_id="b-expired", ttl_s=10)
    revoked = make_invite(invite_id="c-revoked")
    used = make_invite(invite_id="d-used", max_uses=1)
    for i, invite in enumerate((active, expired, revoked, used)):
        store.record_invite(invite, created_at=NOW + i)
    store.revoke_invite("c-revoked", NOW + 5)
    store.admit(make_member("x"), used)
    seen_in_use = make_invite(invite_id="e-unrecorded")
    store.admit(make_member("y"), seen_in_use)
    records = store.list_invites(NOW + 100)
    assert [(r.invite_id, r.state, r.uses) for r in records] == [
        ("a-active", InviteState.ACTIVE, 0),
        ("b-expired", InviteState.EXPIRED, 0),
        ("c-revoked", InviteState.REVOKED, 0),
        ("d-used", InviteState.USED_UP, 1),
        ("e-unrecorded", InviteState.ACTIVE, 1),
    ]
    assert records[0].created_at == NOW and records[-1].created_at is None
    assert records[0].expires_at == NOW + 7200 and records[3].max_uses == 1
    store.record_invite(seen_in_use, created_at=NOW + 9)  # recording again keeps its uses
    again = store.invite("e-unrecorded", NOW)
    assert again is not None and (again.created_at, again.uses) == (NOW + 9, 1)


@pytest.mark.parametrize(
    ("expires_at", "max_uses", "uses", "revoked_at", "state"),
    [
        (NOW + 1, None, 10, None, InviteState.ACTIVE),
        (NOW + 1, 3, 2, None, InviteState.ACTIVE),
        (NOW, 3, 2, None, InviteState.EXPIRED),
        (NOW + 1, 3, 3, None, InviteState.USED_UP),
        (NOW - 1, 3, 3, None, InviteState.USED_UP),
        (NOW - 1, 3, 3, NOW - 5, InviteState.REVOKED),
        (NOW + 1, None, 0, NOW, InviteState.REVOKED),
    ],
)
def test_invite_state(expires_at: float, max_uses: int | None, uses: int, revoked_at: float | None, state: InviteState) -> None:
    assert invite_state(expires_at=expires_at, max_uses=max_uses, uses=uses, revoked_at=revoked_at, now=NOW) is state


def test_invite_labels(store: SqlitePoolRegistry) -> None:
    labelled, plain = make_invite(), make_invite()
    store.record_invite(labelled, created_at=NOW, label="Bob's laptop")
    store.record_invite(plain, created_at=NOW + 1)
    store.record_invite(labelled, created_at=NOW)  # recorded again without a label: the label stays
    assert [(r.invite_id, r.label) for r in store.list_invites(NOW)] == [(labelled.invite_id, "Bob's laptop"), (plain.invite_id, None)]
    with pytest.raises(ConfigError, match="at most 200"):
        store.record_invite(make_invite(), created_at=NOW, label="x" * 201)


def test_find_invite_by_unique_prefix(store: SqlitePoolRegistry) -> None:
    for invite_id in ("abc123", "abd456", "abc"):
        store.record_invite(make_invite(invite_id=invite_id), created_at=NOW)
    assert store.find_invite("abd", NOW).invite_id == "abd456"
    assert store.find_invite("abc", NOW).invite_id == "abc"  # an exact id wins over longer ones it starts
    with pytest.raises(ConfigError, match="3 invites start with 'ab'"):
        store.find_invite("ab", NOW)
    with pytest.raises(ConfigError, match="no invite"):
        store.find_invite("zzz", NOW)
    with pytest.raises(ConfigError, match="no invite"):
        store.find_invite("  ", NOW)


def test_find_node_by_unique_prefix_among_members_bans_and_extras(store: SqlitePoolRegistry) -> None:
    a, b = make_member("a"), make_member("b")
    store.admit(a, None)
    store.ban(b.node_id, "spam", NOW)
    assert store.find_node(a.node_id[:12]) == a.node_id
    assert store.find_node(b.node_id[:12].upper()) == b.node_id
    with pytest.raises(ConfigError, match="2 volunteers' fingerprints start with 'bf1'"):
        store.find_node("bf1")
    stranger = make_member("never joined").node_id
    assert store.find_node(stranger) == stranger  # a whole fingerprint: may be banned before it joins
    with pytest.raises(ConfigError, match="no volunteer"):
        store.find_node(stranger[:10])
    assert store.find_node(stranger[:10], also=[stranger]) == stranger


def test_bans(store: SqlitePoolRegistry) -> None:
    member = make_member("bad")
    store.admit(member, make_invite())
    stranger = make_member("stranger")
    store.ban(member.node_id, "wrong results", NOW)
    store.ban(stranger.node_id, "spam", NOW + 1)
    store.ban(member.node_id, "wrong results, twice", NOW + 2)
    assert store.is_banned(member.node_id) and store.is_banned(stranger.node_id)
    assert [(b.node_id, b.reason, b.banned_at) for b in store.bans()] == [
        (member.node_id, "wrong results, twice", NOW), (stranger.node_id, "spam", NOW + 1),
    ]
    for who, invite in ((member, None), (stranger, make_invite())):
        with pytest.raises(AuthFailed, match="banned"):
            store.admit(who, invite)
    assert store.member(stranger.node_id) is None
    assert store.unban(member.node_id) and not store.unban(member.node_id)
    store.admit(member, None)
    assert not store.is_banned(member.node_id)


def test_contributions_add_up(store: SqlitePoolRegistry) -> None:
    a, b = make_member("a"), make_member("b")
    store.admit(a, None)
    store.admit(b, None)
    assert store.record_contribution(a.node_id, steps=3, tokens=10, compute_s=0.25, bytes_in=100, bytes_out=200)
    assert store.record_contribution(a.node_id, steps=1, tokens=5, compute_s=0.5, bytes_in=1, bytes_out=2)
    ghost = NodeId("not-a-member")
    assert not store.record_contribution(ghost, steps=1, tokens=1, compute_s=0, bytes_in=0, bytes_out=0)
    skipped = store.record_contributions({b.node_id: Contribution(steps=2, bytes_out=7), ghost: Contribution(steps=1)})
    assert skipped == [ghost]
    by_id = {r.node_id: r.contribution for r in store.member_records()}
    assert by_id == {a.node_id: Contribution(4, 15, 0.75, 101, 202), b.node_id: Contribution(2, 0, 0.0, 0, 7)}
    assert Contribution(1, 2, 0.5, 3, 4) + Contribution(1, 1, 0.5, 1, 1) == Contribution(2, 3, 1.0, 4, 5)
    for bad in ({"steps": -1}, {"compute_s": float("nan")}, {"tokens": 1.5}):
        with pytest.raises(ValueError):
            store.record_contribution(a.node_id, **{"steps": 0, "tokens": 0, "compute_s": 0.0, "bytes_in": 0, "bytes_out": 0, **bad})


def test_touch_moves_last_seen_forward_only(store: SqlitePoolRegistry) -> None:
    member = make_member("m")
    store.admit(member, None)
    assert store.touch(member.node_id, NOW + 30)
    assert store.touch(member.node_id, NOW + 10)
    assert not store.touch(NodeId("nobody"), NOW)
    record = store.member_record(member.node_id)
    assert record is not None and record.last_seen == NOW + 30


def test_meta(store: SqlitePoolRegistry) -> None:
    assert store.get_meta("pool_name") is None
    store.set_meta("pool_name", "lab")
    store.set_meta("pool_name", "lab 2")
    store.set_meta("model_id", "SmolLM2-135M-Instruct")
    assert (store.get_meta("pool_name"), store.get_meta("model_id")) == ("lab 2", "SmolLM2-135M-Instruct")


# --- persistence -----------------------------------------------------------------------


def test_everything_survives_a_reopen(db_path: Path) -> None:
    single = make_invite(max_uses=1, invite_id="single")
    member, banned = make_member("laptop"), make_member("bad")
    with SqlitePoolRegistry(db_path) as store:
        store.record_invite(single, created_at=NOW)
        store.record_invite(make_invite(invite_id="revoked"), created_at=NOW + 1)
        store.revoke_invite("revoked", NOW + 2)
        store.admit(member, single)
        store.record_contribution(member.node_id, steps=7, tokens=70, compute_s=1.5, bytes_in=10, bytes_out=20)
        store.ban(banned.node_id, "spam", NOW)
        store.set_meta("created_at", str(NOW))
        before = (store.member_records(), store.list_invites(NOW), store.bans(), store.get_meta("created_at"))
    with SqlitePoolRegistry(db_path) as store:
        assert (store.member_records(), store.list_invites(NOW), store.bans(), store.get_meta("created_at")) == before
        assert store.invite_uses("single") == 1
        store.admit(Member(member.node_id, member.public_key, "laptop", NOW + 100), None)  # rejoins without invite
        with pytest.raises(AuthFailed, match="already been used"):
            store.admit(make_member("another"), single)
        with pytest.raises(AuthFailed, match="revoked"):
            store.admit(make_member("another"), make_invite(invite_id="revoked"))
        assert store.is_banned(banned.node_id)
    assert not db_path.with_name(DB_FILE_NAME + "-wal").exists(), "a clean close leaves one self-contained file"


def test_backup_is_a_complete_copy(store: SqlitePoolRegistry, tmp_path: Path) -> None:
    member = make_member("m")
    store.admit(member, make_invite(max_uses=3))
    store.set_meta("pool_name", "lab")
    store.backup(tmp_path / "copy.sqlite3")
    with SqlitePoolRegistry(tmp_path / "copy.sqlite3") as copy:
        assert copy.member_records() == store.member_records()
        assert copy.get_meta("pool_name") == "lab"


def test_two_concurrent_admits_of_a_single_use_invite_one_wins(db_path: Path) -> None:
    """Threads on one store and on two connections to the same file: every invite is taken exactly once."""
    stores = [SqlitePoolRegistry(db_path), SqlitePoolRegistry(db_path)]
    try:
        for round_ in range(20):
            invite = make_invite(max_uses=1, invite_id=f"race-{round_}")
            racers = [stores[0], stores[round_ % 2]]
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def join(store: SqlitePoolRegistry, name: str) -> None:
                member = make_member(name)
                barrier.wait()
                try:
                    store.admit(member, invite)
                    outcomes.append("won")
                except AuthFailed:
                    outcomes.append("refused")

            threads = [threading.Thread(target=join, args=(s, f"r{round_}-{i}")) for i, s in enumerate(racers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert sorted(outcomes) == ["refused", "won"], round_
            assert stores[1].invite_uses(invite.invite_id) == 1
        assert len(stores[1].members()) == 20
    finally:
        for s in stores:
            s.close()


# --- migrations ------------------------------------------------------------------------

FAKE_NEXT = Migration(
    LATEST + 1, ("ALTER TABLE members ADD COLUMN region TEXT", "CREATE TABLE regions (name TEXT PRIMARY KEY)")
)


def test_migrates_forward_and_keeps_data(db_path: Path) -> None:
    member = make_member("m")
    with SqlitePoolRegistry(db_path) as store:
        store.admit(member, make_invite(max_uses=1))
    with SqlitePoolRegistry(db_path, migrations=(*MIGRATIONS, FAKE_NEXT)) as store:
        assert store.schema_version == LATEST + 1
        assert store.member(member.node_id) == member
        columns = [row[1] for row in store._conn.execute("PRAGMA table_info(members)")]
        assert "region" in columns
    with SqlitePoolRegistry(db_path, migrations=(*MIGRATIONS, FAKE_NEXT)) as store:  # idempotent
        assert store.schema_version == LATEST + 1
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}; this Butterfly reads up to {LATEST}") as err:
        SqlitePoolRegistry(db_path)
    assert "update Butterfly" in (err.value.hint or "")


def test_a_failing_migration_changes_nothing(db_path: Path) -> None:
    SqlitePoolRegistry(db_path).close()
    broken = Migration(LATEST + 1, ("CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"))
    with pytest.raises(StoreError, match="syntax error"):
        SqlitePoolRegistry(db_path, migrations=(*MIGRATIONS, broken))
    with SqlitePoolRegistry(db_path) as store:
        assert store.schema_version == LATEST
        assert store._conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None


def test_a_version_1_file_gains_invite_labels_and_keeps_its_invites(db_path: Path) -> None:
    invite = make_invite(max_uses=2)
    with SqlitePoolRegistry(db_path, migrations=MIGRATIONS[:1]) as old:
        old._conn.execute(  # what a version-1 coordinator wrote
            "INSERT INTO invites (invite_id, pool_name, created_at, expires_at, max_uses, uses) VALUES (?, ?, ?, ?, ?, 1)",
            (invite.invite_id, invite.pool_name, NOW, invite.expires_at, invite.max_uses),
        )
    with SqlitePoolRegistry(db_path) as store:
        assert store.schema_version == 2
        record = store.invite(invite.invite_id, NOW)
        assert record is not None and record.label is None and record.uses == 1
        store.record_invite(invite, created_at=NOW + 5, label="  for   Alice ")
        record = store.invite(invite.invite_id, NOW)
        assert record is not None and (record.label, record.uses, record.created_at) == ("for Alice", 1, NOW)


def test_migrations_must_be_numbered_in_order(db_path: Path) -> None:
    with pytest.raises(ValueError, match="numbered"):
        SqlitePoolRegistry(db_path, migrations=(MIGRATIONS[0], Migration(3, ())))


# --- failures --------------------------------------------------------------------------


def test_garbage_file_is_a_store_error_naming_the_file(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError) as err:
        SqlitePoolRegistry(db_path)
    assert str(db_path) in err.value.message and str(db_path) in (err.value.hint or "")
    assert "backup" in (err.value.hint or "")


def test_damaged_pages_are_found_on_open(db_path: Path) -> None:
    with SqlitePoolRegistry(db_path) as store:
        for i in range(300):
            store.admit(make_member(f"v{i:03d}" + "x" * 200), None)
    data = bytearray(db_path.read_bytes())
    page = 4096
    data[2 * page: 6 * page] = os.urandom(4 * page)
    db_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=str(db_path).replace("\\", "\\\\")) as err:
        SqlitePoolRegistry(db_path)
    assert "backup" in (err.value.hint or "")


def test_another_programs_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE photos (id INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not Butterfly's"):
        SqlitePoolRegistry(db_path)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions that bind this user")
def test_read_only_folder_is_a_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    SqlitePoolRegistry(folder / DB_FILE_NAME).close()
    (tmp_path / "ro-new").mkdir()
    for path in (folder / DB_FILE_NAME, tmp_path / "ro-new" / DB_FILE_NAME):
        path.parent.chmod(0o500)
        try:
            with pytest.raises(StoreError) as err:
                SqlitePoolRegistry(path)
            assert "writable" in (err.value.hint or "")
        finally:
            path.parent.chmod(0o700)


def test_read_only_database_is_a_store_error(store: SqlitePoolRegistry) -> None:
    """Every user, root included: the connection is made read-only the way SQLite sees an unwritable file."""
    store._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="readonly") as err:
        store.admit(make_member("m"), None)
    assert "writable" in (err.value.hint or "")


def test_unusable_folder_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreError) as err:
        SqlitePoolRegistry(tmp_path / "a-file" / DB_FILE_NAME)
    assert "--data-dir" in (err.value.hint or "")


def test_locked_database_is_a_store_error(db_path: Path) -> None:
    SqlitePoolRegistry(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked") as err:
            SqlitePoolRegistry(db_path, busy_timeout_s=0.05)
        assert "another process" in (err.value.hint or "")
        holder.execute("COMMIT")
        with SqlitePoolRegistry(db_path, busy_timeout_s=0.05) as store:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked"):
                store.set_meta("k", "v")
            assert store.get_meta("k") is None, "readers are not blocked by a writer"
            holder.execute("ROLLBACK")
            store.set_meta("k", "v")
    finally:
        holder.close()


def test_full_disk_is_a_store_error_and_the_store_recovers(store: SqlitePoolRegistry) -> None:
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as on a full disk
    with pytest.raises(StoreError, match="full") as err:
        for i in range(2000):
            store.set_meta(f"key-{i}", "x" * 500)
    assert "free disk space" in (err.value.hint or "")
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    member = make_member("after")
    store.admit(member, None)
    assert store.member(member.node_id) == member


def test_closed_store_is_a_store_error(db_path: Path) -> None:
    store = SqlitePoolRegistry(db_path)
    store.close()
    with pytest.raises(StoreError):
        store.members()
