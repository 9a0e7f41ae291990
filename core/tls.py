"""TLS bound to the pool key: the pool's certificate *is* its Ed25519 key.

A pool has no domain name and no certificate authority, so the usual web PKI does not
apply. Instead the coordinator presents a self-signed X.509 certificate whose public key
is the pool key itself (TLS 1.3 supports Ed25519 certificates). The TLS handshake then
proves the server holds the pool's private key, and a volunteer checks that the
certificate's key has the fingerprint it pinned — from the invite, from the mDNS record
it consented to, or from its first join. No CA is consulted, so a mismatch cannot be
papered over by a rogue CA either. The certificate also names ``localhost`` and the
coordinator's own addresses, so ordinary HTTPS clients (the OpenAI SDK, curl) can trust
it by pointing at ``pool_cert.pem`` in the pool's data folder.

Plain ``ws://`` is for development on one machine only: both sides must ask for it
(``--insecure-loopback``), and it is refused for anything but a loopback address.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from core.errors import AuthFailed, ConfigError
from core.identity import Identity, fingerprint

CERT_FILE_NAME = "pool_cert.pem"
"""Where the coordinator writes its certificate (public), beside the pool key."""

_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
_NOT_AFTER = datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, brackets allowed) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(url_or_host: str, *, who: str) -> None:
    """Raise :class:`ConfigError` unless plain (unencrypted) traffic stays on this machine."""
    host = urlsplit(url_or_host).hostname if "://" in url_or_host else url_or_host
    if not host or not is_loopback_host(host):
        raise ConfigError(
            f"{who}: --insecure-loopback allows plain ws:// only on this machine, not {host or url_or_host!r}",
            hint="drop --insecure-loopback to use wss://, or bind 127.0.0.1 for local development",
        )


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        host = host.strip("[]")
        if not host or host in seen or host in ("0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def pool_certificate(identity: Identity, *, pool_name: str, hosts: Iterable[str] = ()) -> bytes:
    """A PEM certificate for ``identity``'s key, self-signed, valid for ``hosts`` and loopback.

    The validity window is fixed and wide: trust comes from the pinned key, not dates.
    """
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, (pool_name or "Butterfly pool")[:64]),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.fingerprint[:64]),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(int.from_bytes(identity.public_key[:16], "big") >> 1 or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(identity.private_key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def server_context(identity: Identity, *, cert_file: Path, pool_name: str, hosts: Iterable[str] = ()) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting the pool key; writes ``cert_file`` (public) first.

    The private key reaches OpenSSL through a 0600 temporary file that is removed at once
    (``ssl`` loads keys only from files).
    """
    cert_file.write_bytes(pool_certificate(identity, pool_name=pool_name, hosts=hosts))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, name = tempfile.mkstemp(prefix=".tls-", dir=cert_file.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        context.load_cert_chain(cert_file, name)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot serve TLS with the pool key: {exc}",
                          hint=f"check that {cert_file.parent} is writable") from exc
    finally:
        Path(name).unlink(missing_ok=True)
    return context


def client_context() -> ssl.SSLContext:
    """A TLS 1.3 client context that skips CA checks; call :func:`peer_pool_id` and compare pins.

    Not verifying against CAs is deliberate: the pool's certificate is self-signed, and
    its key is checked against the pinned pool id right after the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def pool_id_of_certificate(der: bytes | None) -> str:
    """The pool id (``bf1…`` fingerprint) of the Ed25519 key in a DER certificate.

    Raises :class:`AuthFailed` when there is no certificate or its key is not Ed25519:
    such a server is not a Butterfly pool.
    """
    if not der:
        raise AuthFailed("the server presented no TLS certificate", hint="check the address; this is not a Butterfly pool")
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise AuthFailed(f"the server's TLS certificate is unreadable: {exc}", hint="this is not a Butterfly pool") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuthFailed(
            f"the server's TLS certificate holds a {type(key).__name__}, not a pool key",
            hint="this is not a Butterfly pool, or something between you and it intercepts TLS",
        )
    return fingerprint(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def peer_pool_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The pool id proven by a finished TLS handshake (see :func:`pool_id_of_certificate`)."""
    if ssl_object is None:
        raise AuthFailed("the connection is not encrypted", hint="use a wss:// or https:// address")
    return pool_id_of_certificate(ssl_object.getpeercert(binary_form=True))


def pinned_https_context(url: str, pool_id: str | None, *, timeout: float = 10.0) -> tuple[ssl.SSLContext, str]:
    """A client context that trusts exactly the certificate the pool at ``url`` presents now.

    The certificate is fetched once, its key checked against ``pool_id`` (no pin: it is
    accepted and its id returned for the caller to show), and then used as the only
    trust anchor — so the real request succeeds only against the holder of that pool
    key. Host names are not checked: the key is the identity. Returns the context and
    the pool id seen.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"not an https:// address: {url!r}", hint="use the coordinator's https:// address")
    try:
        pem = ssl.get_server_certificate((parts.hostname, parts.port or 443), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot reach the coordinator at {url}: {exc}", hint="check the address and that it is running") from exc
    cert = x509.load_pem_x509_certificate(pem.encode())
    seen = pool_id_of_certificate(cert.public_bytes(serialization.Encoding.DER))
    check_pin(seen, pool_id, where=url)
    context = ssl.create_default_context(cadata=pem)
    context.check_hostname = False
    return context, seen


def check_pin(seen: str, pinned: str | None, *, where: str) -> None:
    """Refuse a pool whose key is not the pinned one (no pin: nothing to compare yet)."""
    if pinned is not None and seen != pinned:
        raise AuthFailed(
            f"the pool at {where} presents key {seen}, but this machine pinned {pinned}",
            hint="someone may be impersonating the pool; ask its host for a fresh invite and check the pool id",
        )


__all__ = [
    "CERT_FILE_NAME",
    "check_pin",
    "client_context",
    "is_loopback_host",
    "peer_pool_id",
    "pinned_https_context",
    "pool_certificate",
    "pool_id_of_certificate",
    "require_loopback",
    "server_context",
]
