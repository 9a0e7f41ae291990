"""The coordinator's settings: one frozen value with documented defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from core.errors import ConfigError

DTYPES = ("float32", "bfloat16")


def default_data_dir() -> Path:
    """Where a coordinator keeps its pool key and state unless told otherwise."""
    return Path(platformdirs.user_data_dir("butterfly", appauthor=False)) / "coordinator"


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig:
    """Everything a coordinator needs to start.

    - ``host``/``port``: where the HTTP API and the volunteer websocket (``/ws``) listen;
      port 0 picks a free one.
    - ``min_volunteers``: how many volunteers must be connected before the first plan;
      ``settle_s`` waits that long after the last join before planning, so volunteers
      that start together land in one plan.
    - ``dtype``: the compute dtype volunteers run in; hidden states travel in it too.
    - ``heartbeat_interval_s``/``heartbeat_timeout_s``: liveness of volunteer links.
    - ``handshake_timeout_s``: a connection must finish authenticating within this.
    - ``step_timeout_s``: the longest one stage may take for one forward step.
    - ``request_wait_s``: how long a request waits for a ready pipeline before failing.
    - ``context_tokens``/``max_sessions``: KV budget each stage must reserve memory for.
    - ``chunk_bytes``: size of the weight chunks volunteers fetch.
    - ``max_pipelines``: how many full pipelines (replicas) to build when the pool has the
      volunteers for more than one; ``min_gain``: the relative improvement of the
      bottleneck a re-plan must bring before the pool switches (hysteresis).
    - ``rebalance_cooldown_s``: the least time between two optional re-plans (a join or a
      change of speed); a broken plan (a volunteer lost) is replaced at once.
    - ``load_timeout_s``: how long a new plan may take to load before it is abandoned.
    - ``recovery_attempts``: how many stage failures one request survives.
    - ``api_key``: if set, the HTTP generation API requires ``Authorization: Bearer <key>``.
    - ``open_pool``: admit volunteers that bring no invite (anyone who can reach the pool,
      e.g. on the local network); off by default, so joining needs an invite.
    - ``mdns``: advertise the pool on the local network (DNS-SD ``_butterfly._tcp``);
      ``mdns_interfaces`` lists the IPv4 addresses of the interfaces to advertise on
      (empty: those that match ``host``, every interface when it is a wildcard).
    """

    model_path: Path | None = None
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = None
    pool_name: str = "Butterfly pool"
    min_volunteers: int = 1
    settle_s: float = 0.5
    dtype: str = "float32"
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    step_timeout_s: float = 60.0
    request_wait_s: float = 120.0
    context_tokens: int = 2048
    max_sessions: int = 8
    chunk_bytes: int = 8 * 2**20
    api_key: str | None = None
    open_pool: bool = False
    mdns: bool = False
    mdns_interfaces: tuple[str, ...] = ()
    max_pipelines: int = 1
    min_gain: float = 0.15
    rebalance_cooldown_s: float = 10.0
    load_timeout_s: float = 600.0
    recovery_attempts: int = 8

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.min_volunteers < 1:
            raise ConfigError("min_volunteers must be at least 1")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError("heartbeat_timeout_s must be longer than heartbeat_interval_s")
        if self.max_pipelines < 1:
            raise ConfigError("max_pipelines must be at least 1")
        if not 0.0 <= self.min_gain < 1.0:
            raise ConfigError("min_gain must be in [0, 1)")
        if not 2**16 <= self.chunk_bytes <= 16 * 2**20:
            raise ConfigError("chunk_bytes must be between 64 KiB and 16 MiB")
        for address in self.mdns_interfaces:
            if not _is_ipv4(address):
                raise ConfigError(f"mDNS interface {address!r} is not an IPv4 address", hint="give the interface's address, e.g. 192.168.1.20")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
