"""The coordinator's side of the handshake: who may join, and proof of keys both ways.

Order: the volunteer's Hello (its public key, an invite unless it is already a member,
a fresh nonce) -> our Challenge (the pool key, our signature over the volunteer's nonce,
a fresh nonce of ours) -> the volunteer's Auth (its signature over our nonce) ->
Accepted. Signatures cover domain-separated transcripts (:func:`core.identity.auth_transcript`)
so one side's signature can never be replayed as the other's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import AuthFailed, ProtocolViolation, VersionMismatch
from core.identity import (
    Identity,
    auth_transcript,
    create_invite,
    fingerprint,
    parse_invite,
    verify_invite,
    verify_signature,
)
from core.protocol.frames import PROTOCOL_VERSION
from core.protocol.messages import Accepted, Auth, Challenge, Hello
from core.transport import Channel
from core.types import NodeId
from server.registry import Member, PoolRegistry

if TYPE_CHECKING:
    from server.db import SqlitePoolRegistry


@dataclass(frozen=True, slots=True)
class Admitted:
    """A volunteer that proved its key and was let in."""

    node_id: NodeId
    hello: Hello


async def admit(
    channel: Channel,
    *,
    identity: Identity,
    registry: PoolRegistry,
    pool_name: str,
    heartbeat_interval_s: float,
    timeout_s: float,
    open_pool: bool = False,
) -> Admitted:
    """Run the handshake on a fresh channel; raise :class:`AuthFailed` (or a protocol error) to refuse.

    A newcomer needs a valid invite unless ``open_pool``; an invite it brings anyway is
    still checked (and counted).
    """
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProtocolViolation(f"handshake not finished within {timeout_s:g} s")
        return left

    hello = await channel.recv(timeout=remaining())
    if not isinstance(hello, Hello):
        raise ProtocolViolation(f"expected hello, got {type(hello).__name__}")
    if hello.protocol_version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"volunteer speaks protocol {hello.protocol_version}, this pool speaks {PROTOCOL_VERSION}",
            hint="update Butterfly on the older side",
        )
    node_id = NodeId(fingerprint(hello.node_public_key))
    if registry.is_banned(node_id):
        raise AuthFailed("this volunteer key is banned from the pool", hint="ask the host")
    invite = None
    if registry.member(node_id) is None and (hello.invite or not open_pool):
        if not hello.invite:
            raise AuthFailed(
                "this pool admits new volunteers only with an invite",
                hint="ask the host for an invite (butterfly invite) and pass it with --invite",
            )
        invite = verify_invite(hello.invite, pool=identity, now=time.time())

    nonce = os.urandom(32)
    pool_sig = identity.sign(
        auth_transcript(role="pool", pool_id=identity.fingerprint, node_public_key=hello.node_public_key, nonce=hello.client_nonce)
    )
    await channel.send(
        Challenge(pool_public_key=identity.public_key, pool_name=pool_name, nonce=nonce, pool_signature=pool_sig)
    )
    auth = await channel.recv(timeout=remaining())
    if not isinstance(auth, Auth):
        raise ProtocolViolation(f"expected auth, got {type(auth).__name__}")
    transcript = auth_transcript(role="node", pool_id=identity.fingerprint, node_public_key=hello.node_public_key, nonce=nonce)
    if not verify_signature(hello.node_public_key, auth.signature, transcript):
        raise AuthFailed("the volunteer's signature does not match its public key", hint="restart the volunteer")
    registry.admit(Member(node_id, hello.node_public_key, hello.name, time.time()), invite)
    await channel.send(Accepted(node_id=node_id, heartbeat_interval_s=heartbeat_interval_s))
    return Admitted(node_id, hello)


def issue_invite(
    identity: Identity,
    registry: SqlitePoolRegistry,
    *,
    pool_name: str,
    addresses: Sequence[str],
    ttl_s: float,
    max_uses: int | None,
    now: float,
    label: str | None = None,
) -> str:
    """Sign a new invite to the pool and record it (with the host's ``label``) so it can be listed and revoked.

    Raises :class:`~core.errors.ConfigError` for a bad lifetime, use limit, address or label.
    """
    token = create_invite(identity, pool_name=pool_name, addresses=addresses, ttl_s=ttl_s, max_uses=max_uses, now=now)
    registry.record_invite(parse_invite(token), created_at=now, label=label)
    return token
