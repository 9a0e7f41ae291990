"""Identities, invites and handshake transcripts, with real Ed25519 keys."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import AuthFailed, ConfigError
from core.identity import (
    Identity,
    Invite,
    auth_transcript,
    create_invite,
    fingerprint,
    invite_link,
    parse_invite,
    peer_transcript,
    verify_invite,
    verify_signature,
)

NOW = 1_700_000_000.0
POOL = Identity.generate()
OTHER = Identity.generate()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_token(payload: dict, signer: Identity) -> str:
    """A token built by hand, as an attacker or a future version would."""
    raw = json.dumps(payload).encode()
    return f"bfinv1.{b64url(raw)}.{b64url(signer.sign(b'butterfly-invite-v1' + bytes(1) + raw))}"


def payload_of(pool: Identity, **changes: object) -> dict:
    payload = {
        "pool_id": pool.fingerprint, "pool_public_key": b64url(pool.public_key), "invite_id": "inv1",
        "expires_at": NOW + 60, "max_uses": None, "pool_name": "home", "addresses": ["wss://10.0.0.2:8765"],
    }
    return {**payload, **changes}


def invite(**overrides: object) -> str:
    kwargs: dict = {"pool_name": "home", "addresses": ["wss://10.0.0.2:8765", "wss://pool.example:443"],
                    "ttl_s": 3600.0, "max_uses": 5, "now": NOW, "invite_id": "inv-1"}
    return create_invite(POOL, **{**kwargs, **overrides})


# --- fingerprints and signatures ------------------------------------------------------


def test_fingerprints_are_short_stable_and_distinct() -> None:
    assert fingerprint(bytes(32)) == "bf1mzuhvlpymk6xo3epygfy5h4oea"  # pinned: ids must never change
    assert re.fullmatch(r"bf1[a-z2-7]{26}", POOL.fingerprint)
    assert POOL.fingerprint == fingerprint(POOL.public_key) != OTHER.fingerprint
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        fingerprint(bytes(31))


def test_signatures_verify_only_for_their_key_and_data() -> None:
    sig = POOL.sign(b"data")
    assert len(POOL.public_key) == 32 and len(sig) == 64
    assert verify_signature(POOL.public_key, sig, b"data")
    assert not verify_signature(POOL.public_key, sig, b"datA")
    assert not verify_signature(OTHER.public_key, sig, b"data")
    assert not verify_signature(POOL.public_key, sig[:-1], b"data")
    assert not verify_signature(POOL.public_key, bytes(64), b"data")
    assert not verify_signature(POOL.public_key[:31], sig, b"data")


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64), st.binary(max_size=64))
def test_verify_signature_never_raises(key: bytes, sig: bytes, data: bytes) -> None:
    assert verify_signature(key, sig, data) in (True, False)


def test_transcripts_of_different_roles_pools_keys_and_nonces_differ() -> None:
    base = {"pool_id": POOL.fingerprint, "node_public_key": OTHER.public_key, "nonce": b"\x01" * 32}
    pool_t = auth_transcript(role="pool", **base)
    node_t = auth_transcript(role="node", **base)
    assert pool_t != node_t
    assert auth_transcript(role="pool", **{**base, "nonce": b"\x02" * 32}) != pool_t
    assert auth_transcript(role="pool", **{**base, "pool_id": OTHER.fingerprint}) != pool_t
    assert auth_transcript(role="pool", **{**base, "node_public_key": POOL.public_key}) != pool_t
    # A pool signature over a nonce cannot be replayed as the node's proof, even by the same key.
    assert not verify_signature(POOL.public_key, POOL.sign(pool_t), node_t)
    with pytest.raises(ValueError, match="role must be 'pool' or 'node'"):
        auth_transcript(role="admin", **base)
    with pytest.raises(ValueError, match="nonce"):
        auth_transcript(role="node", **{**base, "nonce": b"short"})


# --- key files ------------------------------------------------------------------------


def test_load_or_create_persists_and_reloads_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "identity.pem"
    first = Identity.load_or_create(path)
    again = Identity.load_or_create(path)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert again.public_key == first.public_key and again.fingerprint == first.fingerprint
    assert verify_signature(first.public_key, again.sign(b"x"), b"x")
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.pem"]  # no temporary files left
    if sys.platform != "win32":
        assert path.stat().st_mode & 0o777 == 0o600


def test_concurrent_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(Identity.load_or_create(path).public_key))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "corrupt"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "corrupt"),
        (os.urandom(200), "corrupt"),
        (ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
         "not an Ed25519 key"),
    ],
)
def test_a_corrupt_key_file_is_a_config_error_with_a_hint(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "identity.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as info:
        Identity.load_or_create(path)
    assert info.value.hint is not None and "move" in info.value.hint
    assert path.read_bytes() == content  # never overwritten


# --- invites --------------------------------------------------------------------------


def test_an_invite_round_trips_as_token_and_as_link() -> None:
    token = invite()
    expected = Invite(pool_id=POOL.fingerprint, pool_public_key=POOL.public_key, invite_id="inv-1",
                      expires_at=NOW + 3600, max_uses=5, pool_name="home",
                      addresses=("wss://10.0.0.2:8765", "wss://pool.example:443"))
    assert token.startswith("bfinv1.")
    assert parse_invite(token) == expected
    link = invite_link(token)
    assert link.startswith("butterfly://join?invite=")
    assert parse_invite(link) == expected
    assert parse_invite(f"  {link}\n") == expected
    assert verify_invite(link, pool=POOL, now=NOW) == expected
    assert verify_invite(token, pool=POOL.public_key, now=NOW + 3599) == expected


def test_invite_ids_are_random_by_default() -> None:
    assert parse_invite(invite(invite_id=None)).invite_id != parse_invite(invite(invite_id=None)).invite_id


def test_an_expired_invite_says_when_it_expired() -> None:
    with pytest.raises(AuthFailed, match=r"invite inv-1 expired at 2023-11-14T23:13:20\+00:00") as info:
        verify_invite(invite(), pool=POOL, now=NOW + 3600)
    assert info.value.hint == "ask the host for a new invite"


def test_an_invite_of_another_pool_is_refused() -> None:
    token = create_invite(OTHER, pool_name="theirs", addresses=[], ttl_s=60, max_uses=None, now=NOW)
    parse_invite(token)  # genuine, just not ours
    with pytest.raises(AuthFailed, match=f"issued by another pool \\({OTHER.fingerprint}\\), not this one"):
        verify_invite(token, pool=POOL, now=NOW)


def test_an_invite_signed_by_another_key_is_forged() -> None:
    with pytest.raises(AuthFailed, match="forged invite: its signature does not match"):
        parse_invite(signed_token(payload_of(POOL), OTHER))


def test_an_invite_naming_a_pool_id_that_is_not_its_key_is_forged() -> None:
    token = signed_token(payload_of(OTHER, pool_id=POOL.fingerprint), OTHER)
    with pytest.raises(AuthFailed, match=f"forged invite: pool id {POOL.fingerprint} does not belong"):
        parse_invite(token)


@pytest.mark.parametrize("change", [{"expires_at": NOW + 10**6}, {"max_uses": None}, {"pool_name": "evil"},
                                    {"addresses": ["wss://evil:1"]}])
def test_a_tampered_payload_is_forged(change: dict) -> None:
    prefix, payload, sig = invite().split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered = f"{prefix}.{b64url(json.dumps({**data, **change}).encode())}.{sig}"
    with pytest.raises(AuthFailed, match="forged invite"):
        parse_invite(tampered)


def test_a_flipped_signature_bit_is_forged() -> None:
    prefix, payload, sig = invite().split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 1
    with pytest.raises(AuthFailed, match="forged invite"):
        parse_invite(f"{prefix}.{payload}.{b64url(bytes(raw))}")


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "expected bfinv1.<payload>.<signature>"),
        ("hello", "got 1 dot-separated part"),
        ("a.b", "got 2 dot-separated part"),
        ("xxinv1.abc.def", "does not start with 'bfinv1'"),
        ("bfinv2.abc.def", "unsupported invite version 'bfinv2'"),
        ("bfinv1.ab$c.def", "payload is not base64url"),
        ("bfinv1.a.AAAA", "payload is not base64url"),
        (f"bfinv1.{b64url(b'not json')}.AAAA", "payload is not JSON"),
        (f"bfinv1.{b64url(b'[1]')}.AAAA", "payload must be an object"),
        ("bfinv1." + b64url(b'{"v": NaN}') + ".AAAA", "payload is not JSON"),
        ("bfinv1." + "A" * 5000 + ".x", "5009 characters, the limit is 4096"),
        ("butterfly://pool?invite=x", "must look like butterfly://join"),
        ("butterfly://join?token=x", "exactly one 'invite' parameter"),
        ("butterfly://join?invite=a&invite=b", "exactly one 'invite' parameter"),
    ],
)
def test_malformed_tokens_say_what_is_wrong(token: str, match: str) -> None:
    with pytest.raises(AuthFailed, match=f"malformed invite: .*{match}") as info:
        parse_invite(token)
    assert info.value.hint is not None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pool_public_key": b64url(bytes(31))}, "pool key has 31 bytes"),
        ({"expires_at": "tomorrow"}, "expires_at must be seconds"),
        ({"expires_at": 1e300}, "expires_at must be seconds"),
        ({"max_uses": 0}, "max_uses must be a positive integer"),
        ({"max_uses": True}, "max_uses must be a positive integer"),
        ({"addresses": "wss://x"}, "addresses must be a list"),
        ({"addresses": [""]}, "addresses must be a list"),
        ({"pool_name": 5}, "pool name must be text"),
        ({"extra": 1}, "exactly the fields"),
    ],
)
def test_malformed_payload_fields_are_refused_even_when_signed(change: dict, match: str) -> None:
    with pytest.raises(AuthFailed, match=f"malformed invite: .*{match}"):
        parse_invite(signed_token(payload_of(POOL, **change), POOL))


def test_a_signature_of_the_wrong_length_is_malformed() -> None:
    prefix, payload, _ = invite().split(".")
    with pytest.raises(AuthFailed, match="signature has 3 bytes, expected 64"):
        parse_invite(f"{prefix}.{payload}.{b64url(b'abc')}")


def test_every_truncation_of_a_token_is_refused() -> None:
    token = invite()
    for cut in range(len(token)):
        with pytest.raises(AuthFailed, match="malformed invite|forged invite"):
            parse_invite(token[:cut])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.from_regex(r"bfinv1\.[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,90}", fullmatch=True))
def test_random_text_only_ever_raises_auth_failed(text: str) -> None:
    with pytest.raises(AuthFailed):
        parse_invite(text)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"ttl_s": 0}, "lifetime must be a positive number"),
        ({"ttl_s": -5.0}, "lifetime must be a positive number"),
        ({"ttl_s": float("nan")}, "lifetime must be a positive number"),
        ({"max_uses": 0}, "max_uses must be a positive integer"),
        ({"addresses": "wss://one"}, "must be a list of URLs"),
        ({"addresses": [f"wss://h{i}" for i in range(17)]}, "addresses must be a list of at most 16"),
        ({"pool_name": "p" * 300}, "pool name must be text"),
        ({"ttl_s": 1e300}, "expires_at"),
    ],
)
def test_create_invite_refuses_bad_settings(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        invite(**overrides)


# --- direct links between volunteers --------------------------------------------------


def test_peer_transcripts_bind_pool_listener_dialer_and_nonce() -> None:
    dialer, listener = Identity.generate(), Identity.generate()
    base = {"pool_id": POOL.fingerprint, "listener_id": listener.fingerprint,
            "dialer_public_key": dialer.public_key, "nonce": b"\x01" * 32}
    transcript = peer_transcript(**base)
    signature = dialer.sign(transcript)
    assert verify_signature(dialer.public_key, signature, peer_transcript(**base))
    for change in ({"pool_id": OTHER.fingerprint}, {"listener_id": OTHER.fingerprint},
                   {"dialer_public_key": OTHER.public_key}, {"nonce": b"\x02" * 32}):
        assert not verify_signature(dialer.public_key, signature, peer_transcript(**{**base, **change}))
    # Length prefixes: moving characters between the pool id and the listener id changes the bytes.
    assert peer_transcript(**{**base, "pool_id": "ab", "listener_id": "c"}) != peer_transcript(
        **{**base, "pool_id": "a", "listener_id": "bc"})
    # Never the same bytes as a coordinator handshake over the same key and nonce.
    node_t = auth_transcript(role="node", pool_id=POOL.fingerprint, node_public_key=dialer.public_key,
                             nonce=b"\x01" * 32)
    assert transcript != node_t and not verify_signature(dialer.public_key, signature, node_t)
    with pytest.raises(ValueError, match="nonce"):
        peer_transcript(**{**base, "nonce": b"short"})
    with pytest.raises(ValueError, match="dialer key"):
        peer_transcript(**{**base, "dialer_public_key": b"\x00" * 31})
