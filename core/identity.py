"""Ed25519 identities, signed invites and the challenge-response transcripts.

A pool (coordinator) and every volunteer install each own an Ed25519 key. Its
:func:`fingerprint` is the pool id or node id. A volunteer joins with an *invite*: a
token signed by the pool key that names the pool, its addresses and an expiry. During
the handshake each side signs an :func:`auth_transcript` over the other's fresh nonce;
the transcript is domain-separated by role, so a signature made as one role can never
be replayed as the other.

Token format: ``bfinv1.<payload>.<signature>``, both parts unpadded base64url; the
payload is compact JSON, the signature covers ``b"butterfly-invite-v1\\0" + payload``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, urlsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import AuthFailed, ConfigError
from core.private_file import create_private_file

PUBLIC_KEY_BYTES: int = 32
SIGNATURE_BYTES: int = 64
NONCE_BYTES: int = 32
FINGERPRINT_PREFIX: str = "bf1"
FINGERPRINT_CHARS: int = 26
"""Base32 characters of the key hash in a fingerprint (130 bits)."""

INVITE_PREFIX: str = "bfinv1"
INVITE_LINK_PREFIX: str = "butterfly://join?invite="
MAX_INVITE_CHARS: int = 4096
MAX_ADDRESSES: int = 16
MAX_TEXT_CHARS: int = 256
MAX_EXPIRY: float = 2.0**40
"""Latest expiry time accepted in an invite (seconds since the epoch; year ~36812)."""

_INVITE_DOMAIN = b"butterfly-invite-v1\x00"
_AUTH_DOMAIN = b"butterfly-auth-v1\x00"
_PEER_DOMAIN = b"butterfly-peer-v1\x00"
_ROLES = ("pool", "node")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_INVITE_FIELDS = frozenset(
    {"pool_id", "pool_public_key", "invite_id", "expires_at", "max_uses", "pool_name", "addresses"}
)
_MALFORMED_HINT = "copy the whole invite (or link) again from the host"


def fingerprint(public_key: bytes) -> str:
    """The short, stable id of a public key: ``"bf1"`` + 26 lowercase base32 chars of its SHA-256.

    Used as the pool id and the node id; two keys share one only by a 130-bit collision.
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    digest = base64.b32encode(hashlib.sha256(public_key).digest()).decode("ascii")
    return FINGERPRINT_PREFIX + digest[:FINGERPRINT_CHARS].lower()


class Identity:
    """An Ed25519 key pair: signs for a pool or a volunteer install.

    ``public_key`` is the 32 raw bytes of the public key, ``fingerprint`` its id.
    """

    __slots__ = ("_private", "public_key", "fingerprint")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.fingerprint: str = fingerprint(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity from the operating system's secure random source."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity stored at ``path``, created there (PEM PKCS#8, mode 0600) if absent.

        Parent folders are created. Two processes racing to create it end up with the
        same key. A file that is not an Ed25519 PEM key raises :class:`ConfigError`.
        """
        path = Path(path)
        if not path.exists():
            try:
                return cls._create(path)
            except FileExistsError:
                pass  # another process created it first: use theirs
            except OSError as exc:
                raise ConfigError(f"cannot write the identity key {path}: {exc}",
                                  hint="check that the folder is writable, or choose another location") from exc
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> Identity:
        hint = (f"move {path} away to create a new identity; the id derived from it "
                "will change, so the pool/volunteer must be introduced again")
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the identity key {path}: {exc}", hint=hint) from exc
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"identity key file {path} is corrupt or not an unencrypted PEM key: {exc}",
                              hint=hint) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"identity key file {path} holds a {type(key).__name__}, not an Ed25519 key",
                              hint=hint)
        return cls(key)

    @classmethod
    def _create(cls, path: Path) -> Identity:
        identity = cls.generate()
        pem = identity._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        create_private_file(path, pem)
        return identity

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The private key, for signing certificates locally; it never leaves this process."""
        return self._private

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.fingerprint})"


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``data``; never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def auth_transcript(*, role: str, pool_id: str, node_public_key: bytes, nonce: bytes) -> bytes:
    """The bytes a ``role`` ("pool" or "node") signs to prove its key in the handshake.

    Binds the pool, the volunteer's key and the other side's nonce; every field is
    length-prefixed and the role is part of the domain, so transcripts of different
    roles, pools, keys or nonces never coincide.
    """
    if role not in _ROLES:
        raise ValueError(f"role must be 'pool' or 'node', got {role!r}")
    if len(node_public_key) != PUBLIC_KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"node key and nonce must be {PUBLIC_KEY_BYTES} and {NONCE_BYTES} bytes")
    parts = (role.encode("ascii"), pool_id.encode("utf-8"), node_public_key, nonce)
    return _AUTH_DOMAIN + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def peer_transcript(*, pool_id: str, listener_id: str, dialer_public_key: bytes, nonce: bytes) -> bytes:
    """The bytes a dialing volunteer signs to prove its key on a direct link to another volunteer.

    Binds the pool, the listening volunteer's node id, the dialer's key and the listener's
    fresh nonce, each length-prefixed under a domain of its own: the signature cannot be
    replayed to another listener, another pool or another connection, nor mistaken for a
    coordinator handshake's :func:`auth_transcript`.
    """
    if len(dialer_public_key) != PUBLIC_KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"dialer key and nonce must be {PUBLIC_KEY_BYTES} and {NONCE_BYTES} bytes")
    parts = (pool_id.encode("utf-8"), listener_id.encode("utf-8"), dialer_public_key, nonce)
    return _PEER_DOMAIN + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


# --- invites --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invite:
    """What a verified invite token says. ``addresses`` are the coordinator's URLs.

    ``max_uses`` (None: unlimited) is counted by the pool's registry, not here.
    """

    pool_id: str
    pool_public_key: bytes
    invite_id: str
    expires_at: float
    max_uses: int | None
    pool_name: str
    addresses: tuple[str, ...]


def create_invite(
    pool: Identity,
    *,
    pool_name: str,
    addresses: Sequence[str],
    ttl_s: float,
    max_uses: int | None,
    now: float,
    invite_id: str | None = None,
) -> str:
    """A token signed by ``pool`` that admits volunteers until ``now + ttl_s``.

    ``invite_id`` (default: 96 random bits) lets the pool count uses and revoke it.
    Raises :class:`ConfigError` for a bad name, address list, lifetime or use limit.
    """
    if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ConfigError(f"invite lifetime must be a positive number of seconds, got {ttl_s!r}",
                          hint="pass e.g. ttl_s=86400 for one day")
    if max_uses is not None and (type(max_uses) is not int or max_uses < 1):
        raise ConfigError(f"invite max_uses must be a positive integer or None, got {max_uses!r}",
                          hint="use None for an unlimited invite")
    if isinstance(addresses, str):
        raise ConfigError(f"invite addresses must be a list of URLs, got the text {addresses!r}",
                          hint="pass addresses=[url], not addresses=url")
    invite_id = secrets.token_urlsafe(12) if invite_id is None else invite_id
    payload = {
        "pool_id": pool.fingerprint,
        "pool_public_key": _b64url(pool.public_key),
        "invite_id": invite_id,
        "expires_at": float(now + ttl_s),
        "max_uses": max_uses,
        "pool_name": pool_name,
        "addresses": list(addresses),
    }
    try:
        _check_payload(payload)
    except AuthFailed as exc:
        raise ConfigError(f"cannot create invite: {exc.message.removeprefix('malformed invite: ')}",
                          hint=f"names and addresses are at most {MAX_TEXT_CHARS} characters, "
                               f"at most {MAX_ADDRESSES} addresses") from None
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    token = f"{INVITE_PREFIX}.{_b64url(raw)}.{_b64url(pool.sign(_INVITE_DOMAIN + raw))}"
    if len(token) > MAX_INVITE_CHARS:
        raise ConfigError(f"invite would be {len(token)} characters, the limit is {MAX_INVITE_CHARS}",
                          hint="use fewer or shorter addresses")
    return token


def parse_invite(token: str) -> Invite:
    """Decode an invite token or ``butterfly://join?invite=...`` link and check it is self-consistent.

    The signature must verify against the public key inside, and that key's
    fingerprint must be the pool id inside. Which pool signed it and whether it has
    expired are :func:`verify_invite`'s checks. Raises :class:`AuthFailed` saying
    "malformed invite: ..." or "forged invite: ...".
    """
    if not isinstance(token, str):
        _malformed(f"expected text, got {type(token).__name__}")
    token = token.strip()
    if len(token) > MAX_INVITE_CHARS:
        _malformed(f"{len(token)} characters, the limit is {MAX_INVITE_CHARS}")
    if token.startswith("butterfly:"):
        token = _token_from_link(token)
    parts = token.split(".")
    if len(parts) != 3:
        _malformed(f"expected {INVITE_PREFIX}.<payload>.<signature>, got {len(parts)} dot-separated part(s)")
    prefix, payload_b64, signature_b64 = parts
    if prefix != INVITE_PREFIX:
        if prefix.startswith("bfinv"):
            _malformed(f"unsupported invite version {prefix!r}; this Butterfly reads {INVITE_PREFIX!r}")
        _malformed(f"does not start with {INVITE_PREFIX!r}")
    raw = _b64url_decode(payload_b64, "payload")
    signature = _b64url_decode(signature_b64, "signature")
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        _malformed(f"payload is not JSON: {exc}")
    invite = _check_payload(payload)
    if len(signature) != SIGNATURE_BYTES:
        _malformed(f"signature has {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    if not verify_signature(invite.pool_public_key, signature, _INVITE_DOMAIN + raw):
        raise AuthFailed("forged invite: its signature does not match the pool key it names",
                         hint="the invite was altered; ask the host for a new one")
    if fingerprint(invite.pool_public_key) != invite.pool_id:
        raise AuthFailed(f"forged invite: pool id {invite.pool_id} does not belong to the key it carries",
                         hint="the invite was altered; ask the host for a new one")
    return invite


def verify_invite(token: str, *, pool: Identity | bytes, now: float) -> Invite:
    """Parse ``token`` and check it was signed by *this* pool and has not expired at ``now``.

    ``pool`` is the pool's identity or raw public key. Raises :class:`AuthFailed`:
    malformed, forged, issued by another pool, or expired.
    """
    invite = parse_invite(token)
    pool_key = pool.public_key if isinstance(pool, Identity) else bytes(pool)
    if invite.pool_public_key != pool_key:
        raise AuthFailed(
            f"invite was issued by another pool ({invite.pool_id}), not this one ({fingerprint(pool_key)})",
            hint="ask the host of this pool for an invite, or join the pool the invite is for",
        )
    if now >= invite.expires_at:
        when = datetime.fromtimestamp(invite.expires_at, tz=UTC).isoformat(timespec="seconds")
        raise AuthFailed(f"invite {invite.invite_id} expired at {when}", hint="ask the host for a new invite")
    return invite


def invite_link(token: str) -> str:
    """The ``butterfly://join?invite=...`` link that carries ``token`` (parsed back by :func:`parse_invite`)."""
    return INVITE_LINK_PREFIX + quote(token, safe="")


def _token_from_link(link: str) -> str:
    parts = urlsplit(link)
    if parts.scheme != "butterfly" or parts.netloc != "join" or parts.path not in ("", "/"):
        _malformed("a Butterfly link must look like butterfly://join?invite=...")
    values = parse_qs(parts.query, keep_blank_values=True).get("invite", [])
    if len(values) != 1:
        _malformed("the link must carry exactly one 'invite' parameter")
    return values[0].strip()


def _check_payload(payload: Any) -> Invite:
    if not isinstance(payload, dict) or payload.keys() != _INVITE_FIELDS:
        _malformed(f"payload must be an object with exactly the fields {', '.join(sorted(_INVITE_FIELDS))}")
    pool_id, key_b64, invite_id = payload["pool_id"], payload["pool_public_key"], payload["invite_id"]
    expires_at, max_uses = payload["expires_at"], payload["max_uses"]
    pool_name, addresses = payload["pool_name"], payload["addresses"]
    if not _is_text(pool_id, 1) or not _is_text(invite_id, 1) or not _is_text(pool_name, 0):
        _malformed(f"pool id, invite id and pool name must be text of at most {MAX_TEXT_CHARS} characters")
    if not isinstance(key_b64, str):
        _malformed("pool_public_key must be base64url text")
    pool_key = _b64url_decode(key_b64, "pool_public_key")
    if len(pool_key) != PUBLIC_KEY_BYTES:
        _malformed(f"pool key has {len(pool_key)} bytes, expected {PUBLIC_KEY_BYTES}")
    if type(expires_at) not in (int, float) or not 0 <= expires_at <= MAX_EXPIRY:
        _malformed(f"expires_at must be seconds since the epoch, got {expires_at!r}")
    if max_uses is not None and (type(max_uses) is not int or not 1 <= max_uses <= 2**31):
        _malformed(f"max_uses must be a positive integer or null, got {max_uses!r}")
    if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES or not all(
        _is_text(a, 1) for a in addresses
    ):
        _malformed(f"addresses must be a list of at most {MAX_ADDRESSES} non-empty texts")
    return Invite(pool_id, pool_key, invite_id, float(expires_at), max_uses, pool_name, tuple(addresses))


def _is_text(value: Any, min_chars: int) -> bool:
    return isinstance(value, str) and min_chars <= len(value) <= MAX_TEXT_CHARS


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, what: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        _malformed(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        _malformed(f"{what} is not base64url")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _malformed(problem: str) -> NoReturn:
    raise AuthFailed(f"malformed invite: {problem}", hint=_MALFORMED_HINT)


__all__ = [
    "Identity",
    "Invite",
    "auth_transcript",
    "create_invite",
    "fingerprint",
    "invite_link",
    "parse_invite",
    "peer_transcript",
    "verify_invite",
    "verify_signature",
]
