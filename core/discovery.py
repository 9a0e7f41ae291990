"""What a pool says about itself on the local network (mDNS / DNS-SD), as pure data.

A coordinator advertises one service of type :data:`SERVICE_TYPE`; its TXT record is
the :class:`PoolAdvert` below, written by :func:`encode_txt` and read back by
:func:`decode_txt`. Nothing here touches a socket: the advertiser (server) and the
browser (app) only move these values in and out of zeroconf.

A TXT record comes from anyone on the network, so :func:`decode_txt` bounds and checks
every field before it builds a value, and raises :class:`~core.errors.ProtocolViolation`
naming the first bad one; callers drop such a record (and log it once).

TXT keys (all values UTF-8 text):

=========  ==============================================================
``v``      layout version of this record (:data:`TXT_VERSION`)
``proto``  the wire protocol version the pool speaks
``id``     the pool id: the fingerprint of the pool key (pinned on join)
``name``   the pool's name, for people
``model``  the model's name
``inv``    ``1`` when joining needs an invite, ``0`` for an open pool
``path``   the volunteer websocket's path on the advertised host and port
``vols``   volunteers connected now
``layers`` decoder layers of the model (0 = unknown)
``mib``    size of the model's weights in MiB (0 = unknown)
``need``   MiB of volunteer memory the pool still lacks for one whole copy
=========  ==============================================================
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from core.errors import ConfigError, ProtocolViolation
from core.identity import FINGERPRINT_CHARS, FINGERPRINT_PREFIX
from core.protocol.version import PROTOCOL_VERSION
from core.types import PoolId

SERVICE_TYPE: Final = "_butterfly._tcp.local."
"""The DNS-SD service type every pool advertises."""

TXT_VERSION: Final = 1
"""Layout version of the TXT record written by :func:`encode_txt`."""

MAX_TXT_STRING_BYTES: Final = 255
"""Bytes: DNS caps one ``key=value`` string of a TXT record at this."""

MAX_TXT_BYTES: Final = 1300
"""Bytes: the most :func:`decode_txt` reads from one TXT record (it fits one mDNS packet)."""

MAX_TXT_KEYS: Final = 32
MAX_POOL_NAME_CHARS: Final = 63
MAX_MODEL_CHARS: Final = 96
MAX_WS_PATH_CHARS: Final = 64
MAX_COUNT: Final = 1_000_000
"""The largest volunteer or layer count accepted from a record."""

MAX_MIB: Final = 1 << 30
"""The largest size in MiB accepted from a record (a zebibyte-sized model is a lie)."""

MAX_INSTANCE_BYTES: Final = 63
"""Bytes: DNS-SD caps the instance label of a service name at this."""

_FINGERPRINT = re.compile(rf"{FINGERPRINT_PREFIX}[a-z2-7]{{{FINGERPRINT_CHARS}}}")
_WS_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_REQUIRED = ("v", "proto", "id", "name", "model", "inv", "path")


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolAdvert:
    """One pool as its TXT record describes it; validated on construction.

    ``needed_mib`` is 0 when the connected volunteers already hold the whole model
    (more are still welcome as replicas). Unknown sizes and counts are 0. Raises
    :class:`ConfigError` for a value the record could not carry.
    """

    pool_id: PoolId
    pool_name: str
    model: str
    invite_required: bool
    protocol_version: int = PROTOCOL_VERSION
    ws_path: str = "/ws"
    volunteers: int = 0
    layers: int = 0
    model_mib: int = 0
    needed_mib: int = 0
    tls: bool = True

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ConfigError(f"cannot advertise this pool: {problem}", hint="shorten or fix the named value")

    @property
    def compatible(self) -> bool:
        """Whether this build of Butterfly speaks the pool's wire protocol."""
        return self.protocol_version == PROTOCOL_VERSION


def encode_txt(advert: PoolAdvert) -> dict[bytes, bytes]:
    """The TXT properties of ``advert``; :func:`decode_txt` reads them back to an equal value."""
    fields = {
        "v": str(TXT_VERSION),
        "proto": str(advert.protocol_version),
        "id": advert.pool_id,
        "name": advert.pool_name,
        "model": advert.model,
        "inv": "1" if advert.invite_required else "0",
        "path": advert.ws_path,
        "vols": str(advert.volunteers),
        "layers": str(advert.layers),
        "mib": str(advert.model_mib),
        "need": str(advert.needed_mib),
        "tls": "1" if advert.tls else "0",
    }
    return {key.encode("ascii"): value.encode("utf-8") for key, value in fields.items()}


def decode_txt(properties: Mapping[bytes | str, bytes | str | None]) -> PoolAdvert:
    """Read a pool's TXT properties (as zeroconf hands them over); raises :class:`ProtocolViolation`.

    Unknown keys are ignored (newer pools may add some); a missing required key, an
    oversized record or string, text with control characters, a malformed pool id or
    an out-of-range number is refused with a message naming it.
    """
    if len(properties) > MAX_TXT_KEYS:
        raise ProtocolViolation(f"TXT record has {len(properties)} keys, at most {MAX_TXT_KEYS} are read")
    text: dict[str, str] = {}
    total = 0
    for raw_key, raw_value in properties.items():
        key = _as_text(raw_key, "a key")
        value = "" if raw_value is None else _as_text(raw_value, f"{key!r}")
        size = len(key.encode("utf-8")) + 1 + len(value.encode("utf-8"))
        if size > MAX_TXT_STRING_BYTES:
            raise ProtocolViolation(f"TXT entry {key!r} has {size} bytes, the limit is {MAX_TXT_STRING_BYTES}")
        total += size + 1
        text[key] = value
    if total > MAX_TXT_BYTES:
        raise ProtocolViolation(f"TXT record has {total} bytes, the limit is {MAX_TXT_BYTES}")
    missing = [key for key in _REQUIRED if key not in text]
    if missing:
        raise ProtocolViolation(f"TXT record lacks {', '.join(missing)}")
    version = _count(text, "v", required=True)
    if version < 1:
        raise ProtocolViolation(f"TXT layout version {version} is not valid")
    if text["inv"] not in ("0", "1"):
        raise ProtocolViolation(f"TXT 'inv' must be 0 or 1, got {text['inv'][:16]!r}")
    try:
        return PoolAdvert(
            pool_id=PoolId(text["id"]),
            pool_name=text["name"],
            model=text["model"],
            invite_required=text["inv"] == "1",
            protocol_version=_count(text, "proto", required=True),
            ws_path=text["path"],
            volunteers=_count(text, "vols"),
            layers=_count(text, "layers"),
            model_mib=_count(text, "mib", limit=MAX_MIB),
            needed_mib=_count(text, "need", limit=MAX_MIB),
            tls=text.get("tls", "1") != "0",
        )
    except ConfigError as exc:
        raise ProtocolViolation(exc.message.removeprefix("cannot advertise this pool: ")) from None


def clip_text(text: str, max_chars: int) -> str:
    """``text`` made fit for a record: control characters become spaces, runs of space shrink, cut to ``max_chars``."""
    cleaned = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    return " ".join(cleaned.split())[:max_chars].strip()


def service_name(pool_name: str, pool_id: PoolId) -> str:
    """The DNS-SD service name for a pool: readable, unique per pool key, within DNS limits.

    ``"Alice's pool 3kq7vx2a._butterfly._tcp.local."``: the name (dots become spaces),
    then the first characters of the pool id, so two pools of one name do not collide.
    """
    suffix = " " + pool_id.removeprefix(FINGERPRINT_PREFIX)[:8]
    label = clip_text(pool_name.replace(".", " "), MAX_POOL_NAME_CHARS) or "Butterfly pool"
    while len((label + suffix).encode("utf-8")) > MAX_INSTANCE_BYTES:
        label = label[:-1]
    return f"{label.rstrip()}{suffix}.{SERVICE_TYPE}"


def _problem(advert: PoolAdvert) -> str | None:
    if not isinstance(advert.pool_id, str) or not _FINGERPRINT.fullmatch(advert.pool_id):
        return f"pool id {str(advert.pool_id)[:40]!r} is not a pool key fingerprint"
    for name, value, limit in (("pool name", advert.pool_name, MAX_POOL_NAME_CHARS), ("model", advert.model, MAX_MODEL_CHARS)):
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be non-empty text"
        if len(value) > limit:
            return f"{name} has {len(value)} characters, the limit is {limit}"
        if any(unicodedata.category(c).startswith("C") for c in value):
            return f"{name} contains control characters"
    if not isinstance(advert.ws_path, str) or len(advert.ws_path) > MAX_WS_PATH_CHARS or not _WS_PATH.fullmatch(advert.ws_path):
        return f"websocket path {str(advert.ws_path)[:40]!r} is not a plain absolute path"
    if not isinstance(advert.invite_required, bool):
        return "invite_required must be true or false"
    for name, number, limit in (
        ("protocol version", advert.protocol_version, MAX_COUNT),
        ("volunteer count", advert.volunteers, MAX_COUNT),
        ("layer count", advert.layers, MAX_COUNT),
        ("model size", advert.model_mib, MAX_MIB),
        ("needed memory", advert.needed_mib, MAX_MIB),
    ):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= limit:
            return f"{name} must be a whole number from 0 to {limit}, got {number!r}"
    return None


def _as_text(raw: bytes | str, what: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(f"TXT {what} is not UTF-8") from None


def _count(text: Mapping[str, str], key: str, *, required: bool = False, limit: int = MAX_COUNT) -> int:
    raw = text.get(key)
    if raw is None and not required:
        return 0
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise ProtocolViolation(f"TXT {key!r} must be a whole number, got {(raw or '')[:16]!r}")
    value = int(raw)
    if value > limit:
        raise ProtocolViolation(f"TXT {key!r} is {value}, the limit is {limit}")
    return value
