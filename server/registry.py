"""Who belongs to the pool: admitted volunteer keys and invite use.

A volunteer that joined once with a valid invite becomes a *member* (its public key
is remembered) and may rejoin without one. Invites with a use limit are counted here.
This registry lives in memory; its interface is what a persistent store implements.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from core.errors import AuthFailed
from core.identity import Invite
from core.types import NodeId


@dataclass(frozen=True, slots=True)
class Member:
    """A volunteer key admitted to the pool."""

    node_id: NodeId
    public_key: bytes
    name: str
    joined_at: float


class PoolRegistry:
    """Members and invite use counts. Thread-safe; every method is O(1)."""

    def __init__(self) -> None:
        self._members: dict[NodeId, Member] = {}
        self._invite_uses: dict[str, int] = {}
        self._banned: set[NodeId] = set()
        self._lock = threading.Lock()

    def member(self, node_id: NodeId) -> Member | None:
        with self._lock:
            return self._members.get(node_id)

    def members(self) -> list[Member]:
        with self._lock:
            return list(self._members.values())

    def is_banned(self, node_id: NodeId) -> bool:
        with self._lock:
            return node_id in self._banned

    def admit(self, member: Member, invite: Invite | None) -> None:
        """Record ``member``; count one use of ``invite`` (refusing it when used up)."""
        with self._lock:
            if member.node_id in self._banned:
                raise AuthFailed("this volunteer key is banned from the pool", hint="ask the host")
            if invite is not None and member.node_id not in self._members:
                used = self._invite_uses.get(invite.invite_id, 0)
                if invite.max_uses is not None and used >= invite.max_uses:
                    raise AuthFailed(
                        f"invite {invite.invite_id} has already been used {used} time(s), its limit",
                        hint="ask the host for a new invite",
                    )
                self._invite_uses[invite.invite_id] = used + 1
            self._members.setdefault(member.node_id, member)
