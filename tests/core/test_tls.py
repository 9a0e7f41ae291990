"""The pool's TLS certificate is its Ed25519 key; pins are compared against that key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from core.errors import AuthFailed, ConfigError
from core.identity import Identity
from core.tls import (
    check_pin,
    is_loopback_host,
    pool_certificate,
    pool_id_of_certificate,
    require_loopback,
    server_context,
)


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_the_certificate_carries_the_pool_key_and_names_loopback_and_the_host() -> None:
    pool = Identity.generate()
    cert = x509.load_pem_x509_certificate(pool_certificate(pool, pool_name="Home", hosts=["10.0.0.5", "pool.example"]))
    assert pool_id_of_certificate(der(pool_certificate(pool, pool_name="Home"))) == pool.fingerprint
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.5"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "pool.example"}


def test_a_certificate_with_another_kind_of_key_is_not_a_pool() -> None:
    key = generate_private_key(SECP256R1())
    name = x509.Name([])
    import datetime

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1)).not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(key, __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256())
    )
    with pytest.raises(AuthFailed, match="not a pool key"):
        pool_id_of_certificate(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(AuthFailed, match="no TLS certificate"):
        pool_id_of_certificate(None)
    with pytest.raises(AuthFailed, match="unreadable"):
        pool_id_of_certificate(b"not a certificate")


def test_a_pin_mismatch_is_refused_and_no_pin_accepts() -> None:
    a, b = Identity.generate(), Identity.generate()
    check_pin(a.fingerprint, a.fingerprint, where="wss://x")
    check_pin(a.fingerprint, None, where="wss://x")
    with pytest.raises(AuthFailed, match="impersonating"):
        check_pin(a.fingerprint, b.fingerprint, where="wss://x")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.3.4.5", True),
     ("0.0.0.0", False), ("192.168.1.2", False), ("pool.example", False), ("", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_plain_traffic_is_refused_off_loopback() -> None:
    require_loopback("ws://127.0.0.1:8765/ws", who="volunteer")
    require_loopback("127.0.0.1", who="coordinator")
    with pytest.raises(ConfigError, match="only on this machine"):
        require_loopback("ws://192.168.1.4:8765/ws", who="volunteer")
    with pytest.raises(ConfigError, match="only on this machine"):
        require_loopback("0.0.0.0", who="coordinator")


def test_the_server_context_serves_tls13_and_leaves_no_key_copy(tmp_path: Path) -> None:
    pool = Identity.generate()
    context = server_context(pool, cert_file=tmp_path / "pool_cert.pem", pool_name="p")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool_cert.pem"]
    assert b"PRIVATE" not in (tmp_path / "pool_cert.pem").read_bytes()
