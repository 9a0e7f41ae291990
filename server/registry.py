"""Who belongs to the pool: the member record and the registry interface admission uses.

A volunteer that joined once with a valid invite becomes a *member* (its public key
is remembered) and may rejoin without one. The registry is persistent
(:class:`server.db.SqlitePoolRegistry`); this module only states what it must offer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.identity import Invite
from core.types import NodeId


@dataclass(frozen=True, slots=True)
class Member:
    """A volunteer key admitted to the pool."""

    node_id: NodeId
    public_key: bytes
    name: str
    joined_at: float


class PoolRegistry(Protocol):
    """What admission needs from the pool's registry (implemented by :class:`server.db.SqlitePoolRegistry`)."""

    def member(self, node_id: NodeId) -> Member | None:
        """The member with this key, if it ever joined."""
        ...

    def members(self) -> list[Member]:
        """Every member."""
        ...

    def is_banned(self, node_id: NodeId) -> bool:
        """True when the host banned this key."""
        ...

    def admit(self, member: Member, invite: Invite | None) -> None:
        """Record ``member``; count one use of ``invite``, refusing it (AuthFailed) when used up or revoked."""
        ...
