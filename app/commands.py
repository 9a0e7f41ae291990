"""What the user can ask the agent to do: one frozen value per command.

The tray, the fallback window and the headless CLI all drive the agent with these
values only (:meth:`app.agent.Agent.handle`), so every front end does the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from app.discovery import DiscoveredPool
from app.hosting import HostRequest
from app.policy import SnoozeChoice
from app.settings import Settings
from core.errors import AuthFailed, ConfigError
from core.identity import Invite, parse_invite


@dataclass(frozen=True, slots=True)
class JoinTarget:
    """A pool to join: its volunteer websocket, the pool id to pin, and how to get in.

    ``invite`` is the token (needed unless the pool is open or already knows this
    machine). ``expected_pool_id`` is the pool key's fingerprint from the invite or the
    advert; a pool that proves a different key is refused.
    """

    url: str
    expected_pool_id: str
    pool_name: str = ""
    invite: str | None = None
    model: str = ""

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ConfigError(f"a pool address must be a ws:// or wss:// URL, got {self.url!r}", hint="join from an invite or a pool found on the network")
        if not self.expected_pool_id:
            raise ConfigError("a pool to join needs its pool id", hint="join from an invite or a pool found on the network")

    @classmethod
    def from_discovered(cls, pool: DiscoveredPool) -> JoinTarget:
        """The target for a pool found on the network (no invite: it must be open, or know us)."""
        return cls(url=pool.ws_url, expected_pool_id=pool.pool_id, pool_name=pool.name, model=pool.advert.model)


def read_invite(text: str, *, now: float) -> tuple[JoinTarget, Invite]:
    """The target an invite token or ``butterfly://`` link points at, and the invite itself.

    Raises :class:`AuthFailed` ("malformed invite: …", "forged invite: …", or expired at
    ``now``, seconds since the epoch) or :class:`ConfigError` when it names no usable address.
    """
    token = text.strip()
    invite = parse_invite(token)
    if invite.expires_at <= now:
        raise AuthFailed("this invite has expired", hint="ask the host for a new invite")
    urls = [a for a in invite.addresses if a.startswith(("ws://", "wss://"))]
    if not urls:
        raise ConfigError("the invite names no pool address this app can dial", hint="ask the host for a new invite")
    if token.startswith("butterfly:"):
        token = parse_qs(urlsplit(token).query).get("invite", [token])[0]
    target = JoinTarget(url=urls[0], expected_pool_id=invite.pool_id, pool_name=invite.pool_name, invite=token)
    return target, invite


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``target`` now (leaving the current pool first), lifting any pause."""

    target: JoinTarget


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop computing at once until resumed; the pool moves the work elsewhere."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Lift a pause or snooze (and clear an error) and compute again when the policy allows."""


@dataclass(frozen=True, slots=True)
class Snooze:
    """Pause now until the moment :func:`app.policy.snooze_until` gives for ``choice``."""

    choice: SnoozeChoice


@dataclass(frozen=True, slots=True)
class FinishThenPause:
    """Finish the work in hand (drain), then stay paused until resumed."""


@dataclass(frozen=True, slots=True)
class Leave:
    """Drain, leave the pool and forget it."""


@dataclass(frozen=True, slots=True)
class StartHosting:
    """Start a coordinator on this machine as ``request`` says."""

    request: HostRequest


@dataclass(frozen=True, slots=True)
class StopHosting:
    """Stop the coordinator this app started."""


@dataclass(frozen=True, slots=True)
class ApplySettings:
    """Save ``settings`` and act on them (policy, start at login)."""

    settings: Settings


@dataclass(frozen=True, slots=True)
class ProbeMachine:
    """Measure this machine (in a child process) if it has not been measured yet."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Leave politely, stop hosting and end the agent."""


Command = (
    Join | Pause | Resume | Snooze | FinishThenPause | Leave | StartHosting | StopHosting | ApplySettings | ProbeMachine | Shutdown
)
