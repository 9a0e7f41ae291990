"""Reading an invite into a pool to join: good tokens and links work; bad ones say what is wrong."""

from __future__ import annotations

import time

import pytest

from app.commands import JoinTarget, read_invite
from core.errors import AuthFailed, ConfigError
from core.identity import Identity, create_invite, invite_link

POOL = Identity.generate()


def token(*, ttl_s: float = 600, addresses: tuple[str, ...] = ("ws://10.0.0.2:8765/ws",)) -> str:
    return create_invite(POOL, pool_name="Lab", addresses=list(addresses), ttl_s=ttl_s, max_uses=None, now=time.time())


def test_a_token_names_the_pool_to_pin_and_where_it_is() -> None:
    raw = token()
    target, invite = read_invite(f"  {raw}\n", now=time.time())
    assert target == JoinTarget(url="ws://10.0.0.2:8765/ws", expected_pool_id=POOL.fingerprint, pool_name="Lab", invite=raw)
    assert invite.pool_id == POOL.fingerprint


def test_a_link_is_read_like_its_token() -> None:
    raw = token()
    target, _ = read_invite(invite_link(raw), now=time.time())
    assert target.invite == raw


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hello", "malformed invite"),
        ("bfinv1.abc.def", "malformed invite"),
        ("", "malformed invite"),
    ],
)
def test_bad_tokens_are_refused_clearly(text: str, words: str) -> None:
    with pytest.raises(AuthFailed, match=words):
        read_invite(text, now=time.time())


def test_a_tampered_token_is_forged() -> None:
    prefix, payload, signature = token().split(".")
    other = token(addresses=("ws://10.6.6.6:1/ws",)).split(".")[1]
    with pytest.raises(AuthFailed, match="forged"):
        read_invite(f"{prefix}.{other}.{signature}", now=time.time())
    assert payload != other


def test_an_expired_invite_is_refused() -> None:
    with pytest.raises(AuthFailed, match="expired"):
        read_invite(token(ttl_s=60), now=time.time() + 120)


def test_an_invite_without_a_websocket_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="address"):
        read_invite(token(addresses=("http://10.0.0.2:8765",)), now=time.time())


def test_join_targets_need_a_websocket_and_a_pool_id() -> None:
    with pytest.raises(ConfigError):
        JoinTarget(url="http://x", expected_pool_id=POOL.fingerprint)
    with pytest.raises(ConfigError):
        JoinTarget(url="ws://x/ws", expected_pool_id="")
