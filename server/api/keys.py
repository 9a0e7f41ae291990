"""API keys for the coordinator's client API, stored as sha256 hashes in one JSON file.

A key is shown once, when it is created; the file keeps only its hash, a short id and the
first characters (so a list can tell keys apart). The coordinator re-reads the file when it
changes on disk, so ``butterfly apikey create`` and ``revoke`` take effect on a running pool.

File format (``api_keys.json`` in the coordinator's data dir)::

    {"version": 1, "keys": [{"id", "name", "preview", "sha256", "created_at", "revoked_at"}]}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.errors import ConfigError, StoreError

KEYS_FILE = "api_keys.json"
KEY_PREFIX = "bfk_"
PREVIEW_CHARS = 8
MAX_NAME_CHARS = 64
FILE_VERSION = 1


def new_secret() -> str:
    """A fresh API key: the ``bfk_`` prefix and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The sha256 (hex) under which a key is stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the store knows about one key: never the key itself.

    ``key_id`` is the first 8 hex digits of the hash; ``preview`` the key's first
    characters; ``revoked_at`` is ``None`` while the key is valid.
    """

    key_id: str
    name: str
    preview: str
    sha256: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyStore:
    """Create, verify, list and revoke the API keys kept in one JSON file.

    Reads are cached and refreshed whenever the file's size or modification time
    changes; writes replace the file atomically. ``secret_factory`` makes new keys
    (a parameter so tests can be deterministic).
    """

    def __init__(self, path: Path, *, secret_factory: Callable[[], str] = new_secret) -> None:
        self.path = path
        self._secret_factory = secret_factory
        self._stamp: tuple[int, int] | None = None
        self._keys: tuple[ApiKey, ...] = ()

    # --- queries -------------------------------------------------------------------

    def list(self) -> list[ApiKey]:
        """Every key ever created here, oldest first, revoked ones included."""
        return list(self._load())

    @property
    def required(self) -> bool:
        """Whether any key is active (then the API refuses requests without one)."""
        return any(k.active for k in self._load())

    def verify(self, secret: str) -> ApiKey | None:
        """The active key whose hash matches ``secret``, or ``None``."""
        digest = hash_secret(secret)
        found = None
        for key in self._load():
            if hmac.compare_digest(key.sha256, digest) and key.active:
                found = key
        return found

    # --- changes -------------------------------------------------------------------

    def create(self, name: str, *, now: float) -> tuple[ApiKey, str]:
        """Add a key named ``name``; returns its record and the secret (shown only this once)."""
        name = name.strip()
        if len(name) > MAX_NAME_CHARS:
            raise ConfigError(f"a key name has at most {MAX_NAME_CHARS} characters")
        keys = self._load()
        secret = self._secret_factory()
        digest = hash_secret(secret)
        if any(k.sha256 == digest for k in keys):
            raise ConfigError("the new key collides with an existing one", hint="create it again")
        key = ApiKey(key_id=digest[:8], name=name, preview=secret[:PREVIEW_CHARS], sha256=digest, created_at=now)
        self._save((*keys, key))
        return key, secret

    def revoke(self, key_id: str, *, now: float) -> ApiKey:
        """Revoke the key whose id is (or starts with) ``key_id``; returns its updated record.

        Raises :class:`ConfigError` when no key or more than one key matches.
        """
        keys = self._load()
        matches = [k for k in keys if key_id and k.key_id.startswith(key_id.strip().lower())]
        if len(matches) != 1:
            what = "no key" if not matches else f"{len(matches)} keys"
            raise ConfigError(f"{what} with id {key_id!r}", hint="see `butterfly apikey list` for the ids")
        target = matches[0]
        if not target.active:
            return target
        revoked = replace(target, revoked_at=now)
        self._save(tuple(revoked if k is target else k for k in keys))
        return revoked

    # --- file ----------------------------------------------------------------------

    def _load(self) -> tuple[ApiKey, ...]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._keys = None, ()
            return self._keys
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._keys = _parse(self.path)
            self._stamp = stamp
        return self._keys

    def _save(self, keys: tuple[ApiKey, ...]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": FILE_VERSION, "keys": [_record(k) for k in keys]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        try:
            os.chmod(tmp, 0o600)
        except OSError:  # some file systems have no POSIX modes; the data dir's own ACL applies
            pass
        os.replace(tmp, self.path)
        self._stamp = None
        self._load()


def _record(key: ApiKey) -> dict[str, object]:
    data = asdict(key)
    data["id"] = data.pop("key_id")
    return data


def _parse(path: Path) -> tuple[ApiKey, ...]:
    hint = f"fix or delete {path} (deleting it removes every key)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the API key file {path}: {exc}", hint=hint) from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise StoreError(f"the API key file {path} has no 'keys' list", hint=hint)
    keys = []
    for entry in data["keys"]:
        try:
            revoked = entry.get("revoked_at")
            keys.append(
                ApiKey(
                    key_id=str(entry["id"]),
                    name=str(entry.get("name", "")),
                    preview=str(entry.get("preview", "")),
                    sha256=_hex64(entry["sha256"]),
                    created_at=float(entry["created_at"]),
                    revoked_at=None if revoked is None else float(revoked),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"the API key file {path} has a malformed entry: {exc}", hint=hint) from exc
    return tuple(keys)


def _hex64(value: object) -> str:
    text = str(value).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("sha256 must be 64 hex digits")
    return text
