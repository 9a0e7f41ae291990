"""The pool's TXT record: what one pool writes, another reads back exactly; anything bad is refused by name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.discovery import (
    MAX_INSTANCE_BYTES,
    MAX_MODEL_CHARS,
    MAX_POOL_NAME_CHARS,
    MAX_TXT_STRING_BYTES,
    SERVICE_TYPE,
    PoolAdvert,
    clip_text,
    decode_txt,
    encode_txt,
    service_name,
)
from core.errors import ConfigError, ProtocolViolation
from core.identity import Identity
from core.protocol.version import PROTOCOL_VERSION
from core.types import PoolId

POOL_ID = PoolId(Identity.generate().fingerprint)


def advert(**changes: object) -> PoolAdvert:
    values: dict[str, object] = dict(pool_id=POOL_ID, pool_name="Alice's pool", model="SmolLM2-135M-Instruct",
                                     invite_required=False, volunteers=3, layers=30, model_mib=514, needed_mib=12)
    values.update(changes)
    return PoolAdvert(**values)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    original = advert(ws_path="/ws", invite_required=True)
    assert decode_txt(encode_txt(original)) == original


def test_zeroconf_style_text_keys_and_values_are_read_too() -> None:
    txt = {k.decode(): v.decode() for k, v in encode_txt(advert()).items()}
    assert decode_txt(txt) == advert()


_names = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")), min_size=1, max_size=MAX_POOL_NAME_CHARS).filter(str.strip)


@given(name=_names, model=_names, volunteers=st.integers(0, 1_000_000), need=st.integers(0, 1 << 30), invite=st.booleans())
def test_round_trip_for_any_valid_advert(name: str, model: str, volunteers: int, need: int, invite: bool) -> None:
    original = advert(pool_name=name, model=model, volunteers=volunteers, needed_mib=need, invite_required=invite)
    encoded = encode_txt(original)
    assert all(len(k) + 1 + len(v) <= MAX_TXT_STRING_BYTES for k, v in encoded.items())
    assert decode_txt(encoded) == original


def test_unknown_keys_are_ignored_and_optional_numbers_default_to_zero() -> None:
    txt = encode_txt(advert())
    for key in (b"vols", b"layers", b"mib", b"need"):
        del txt[key]
    txt[b"future"] = b"whatever"
    txt[b"flag"] = None  # type: ignore[assignment]
    decoded = decode_txt(txt)  # type: ignore[arg-type]
    assert (decoded.volunteers, decoded.layers, decoded.model_mib, decoded.needed_mib) == (0, 0, 0, 0)


def _with(key: bytes, value: bytes | None) -> dict[bytes, bytes | None]:
    txt: dict[bytes, bytes | None] = dict(encode_txt(advert()))
    if value is None:
        del txt[key]
    else:
        txt[key] = value
    return txt


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        (b"id", None, "lacks id"),
        (b"name", None, "lacks name"),
        (b"id", b"bf1short", "fingerprint"),
        (b"id", b"BF1" + b"a" * 26, "fingerprint"),
        (b"name", b"\xff\xfe", "not UTF-8"),
        (b"name", b"evil\x1b[2Jname", "control characters"),
        (b"name", b"x" * (MAX_POOL_NAME_CHARS + 1), "limit"),
        (b"model", b"m" * 250, "bytes"),
        (b"model", b" ", "non-empty"),
        (b"vols", b"-1", "whole number"),
        (b"vols", b"12e3", "whole number"),
        (b"vols", b"99999999", "limit"),
        (b"need", b"9" * 13, "whole number"),
        (b"inv", b"yes", "'inv'"),
        (b"path", b"ws", "path"),
        (b"path", b"/ws?x=1", "path"),
        (b"proto", b"", "whole number"),
        (b"v", b"0", "layout version"),
    ],
)
def test_bad_records_are_refused_with_the_field_named(key: bytes, value: bytes | None, words: str) -> None:
    with pytest.raises(ProtocolViolation, match=words):
        decode_txt(_with(key, value))


def test_oversized_records_are_refused_before_parsing() -> None:
    many = {f"k{i}".encode(): b"v" for i in range(40)}
    with pytest.raises(ProtocolViolation, match="keys"):
        decode_txt(many)
    big = dict(encode_txt(advert()))
    for i in range(6):
        big[f"pad{i}".encode()] = b"p" * 240
    with pytest.raises(ProtocolViolation, match="bytes"):
        decode_txt(big)


def test_a_pool_from_another_protocol_is_read_but_not_compatible() -> None:
    other = decode_txt(_with(b"proto", str(PROTOCOL_VERSION + 1).encode()))
    assert not other.compatible
    assert advert().compatible


def test_adverts_refuse_values_a_record_cannot_carry() -> None:
    with pytest.raises(ConfigError):
        advert(pool_name="x" * (MAX_POOL_NAME_CHARS + 1))
    with pytest.raises(ConfigError):
        advert(model="m" * (MAX_MODEL_CHARS + 1))
    with pytest.raises(ConfigError):
        advert(volunteers=-1)
    with pytest.raises(ConfigError):
        advert(pool_id=PoolId("not-a-fingerprint"))


def test_clip_text_makes_any_name_fit() -> None:
    assert clip_text("  a\tb\n\x00c   d ", 20) == "a b c d"
    assert clip_text("x" * 100, 10) == "x" * 10


@pytest.mark.parametrize("name", ["Alice's pool", "a.b.c", "ü" * 60, "", "  "])
def test_service_names_fit_dns_and_tell_pools_apart(name: str) -> None:
    full = service_name(name, POOL_ID)
    assert full.endswith("." + SERVICE_TYPE)
    instance = full.removesuffix("." + SERVICE_TYPE)
    assert len(instance.encode()) <= MAX_INSTANCE_BYTES
    assert "." not in instance
    assert instance.endswith(POOL_ID[3:11])
