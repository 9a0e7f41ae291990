"""The API key store: hashed at rest, verified, revoked, and re-read when the file changes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from core.errors import ConfigError, StoreError
from server.api.keys import KeyStore, hash_secret, new_secret


def counter_secrets():  # noqa: ANN201 - a secret factory
    numbers = itertools.count(1)
    return lambda: f"bfk_test{next(numbers):04d}"


def test_new_secrets_are_prefixed_random_and_long() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("bfk_") and b.startswith("bfk_") and a != b
    assert len(a) >= 40


def test_create_stores_only_the_hash(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", secret_factory=counter_secrets())
    key, secret = store.create("alice", now=100.0)
    text = (tmp_path / "keys.json").read_text()
    assert secret == "bfk_test0001"
    assert secret not in text
    assert hash_secret(secret) in text
    assert key.key_id == hash_secret(secret)[:8] and key.name == "alice" and key.created_at == 100.0
    assert key.preview == secret[:8]


def test_verify_accepts_active_keys_only(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", secret_factory=counter_secrets())
    assert not store.required
    assert store.verify("bfk_anything") is None
    key, secret = store.create("ci", now=1.0)
    assert store.required
    assert store.verify(secret) == key
    assert store.verify(secret + "x") is None
    assert store.verify("") is None
    revoked = store.revoke(key.key_id, now=2.0)
    assert revoked.revoked_at == 2.0 and not revoked.active
    assert store.verify(secret) is None
    assert not store.required
    assert [k.key_id for k in store.list()] == [key.key_id]


def test_revoke_by_unique_prefix_and_refuses_ambiguity(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", secret_factory=counter_secrets())
    keys = [store.create(f"k{i}", now=float(i))[0] for i in range(3)]
    while len({k.key_id[0] for k in keys}) == len(keys):  # until two ids share their first digit
        keys.append(store.create("more", now=3.0)[0])
    with pytest.raises(ConfigError, match="no key"):
        store.revoke("zzzzzzzz", now=9.0)
    with pytest.raises(ConfigError, match="no key"):
        store.revoke("", now=9.0)
    shared = next(k.key_id[0] for k in keys if sum(o.key_id[0] == k.key_id[0] for o in keys) > 1)
    with pytest.raises(ConfigError, match=r"\d keys"):
        store.revoke(shared, now=9.0)
    assert store.revoke(keys[1].key_id[:6].upper(), now=9.0).key_id == keys[1].key_id
    assert [k.active for k in store.list()][:3] == [True, False, True]
    assert store.revoke(keys[1].key_id, now=10.0).revoked_at == 9.0  # revoking twice keeps the first time


def test_a_second_store_on_the_same_file_sees_changes(tmp_path: Path) -> None:
    """The coordinator's store picks up keys created by ``butterfly apikey`` in another process."""
    path = tmp_path / "keys.json"
    served = KeyStore(path)
    assert not served.required
    cli = KeyStore(path, secret_factory=counter_secrets())
    key, secret = cli.create("late", now=5.0)
    assert served.verify(secret) == key
    cli.revoke(key.key_id, now=6.0)
    assert served.verify(secret) is None


def test_a_malformed_file_fails_closed_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the API key file") as info:
        KeyStore(path).verify("bfk_x")
    assert info.value.hint and "delete" in info.value.hint
    path.write_text(json.dumps({"version": 1, "keys": [{"id": "x", "sha256": "nothex", "created_at": 1}]}))
    with pytest.raises(StoreError, match="malformed entry"):
        KeyStore(path).list()


def test_names_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at most 64"):
        KeyStore(tmp_path / "keys.json").create("x" * 65, now=0.0)
