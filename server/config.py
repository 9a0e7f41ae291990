"""The coordinator's settings: one frozen value with documented defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from core.errors import ConfigError
from core.tls import require_loopback

DTYPES = ("float32", "bfloat16")
WIRE_CODECS = ("auto", "model", "float16", "bfloat16", "int8")
"""Settings of ``wire_codec``: ``auto`` or a codec of :mod:`core.protocol.codec`."""
LOGITS_CODECS = ("model", "float16")
"""Settings of ``wire_logits``."""


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
    - ``dtype``: the compute dtype volunteers run in; hidden states travel in it too unless
      ``wire_codec`` compresses them.
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
    - ``insecure_loopback``: serve plain http/ws instead of TLS bound to the pool key
      (see :mod:`core.tls`); for development, and refused unless ``host`` is loopback.
    - ``hot_spares``: volunteers the plan leaves idle load a copy of a serving stage and
      hold it ready, so losing that stage's volunteer costs a replay but no loading.
    - ``mdns``: advertise the pool on the local network (DNS-SD ``_butterfly._tcp``);
      ``mdns_interfaces`` lists the IPv4 addresses of the interfaces to advertise on
      (empty: those that match ``host``, every interface when it is a wildcard).
    - ``admin_key``: the Bearer key of the admin endpoints (``/api/admin/*``, ``/api/debug/*``);
      None: the one in the data dir's ``admin.key``, created on first start. Client API
      keys never open admin endpoints, and the admin key is not a client key.
    - ``http_max_body_bytes``: the largest HTTP request body (413 beyond it);
      ``http_idle_timeout_s``: an HTTP connection that sends no (complete) request for this
      long is closed.
    - ``api_requests_per_minute``/``api_tokens_per_minute``: per client key (per address
      when the pool has no keys), requests to ``/v1/*`` and ``/api/generate`` and tokens
      they generate; beyond them, 429 with ``Retry-After``. 0: unlimited.
    - ``ws_max_messages_per_s``/``ws_burst_messages`` and ``ws_max_bytes_per_s``/
      ``ws_burst_bytes``: what one volunteer connection may send (token buckets, far above
      what a volunteer sends); beyond them the connection is closed with 1008.
    - ``ws_max_pending_handshakes_per_ip``: websocket connections one address may have open
      before they authenticate (more get HTTP 429); ``handshake_timeout_s`` bounds each.
    - ``verify_share``/``probation_steps``/``strikes_to_quarantine``: result validation
      (:mod:`server.validation`): every step of a volunteer is recomputed by the coordinator
      until ``probation_steps`` of them agreed in a row, then a random ``verify_share`` of
      them; a disagreement is a strike and restarts probation, and ``strikes_to_quarantine``
      strikes quarantine the volunteer. ``probation_steps=0`` and ``verify_share=0`` turn
      checking off.
    - ``wire_codec``: how hidden states travel to and from each volunteer (per link):
      ``model`` (the compute dtype, exact), ``float16``, ``bfloat16``, ``int8`` (per-row
      scales), or ``auto``: exact on links measured at >= 50 MB/s (or not measured), float16
      on slower ones (:func:`server.links.choose_codec`). ``wire_logits``: how the last
      stage returns logits: ``model`` (exact fp32, the default) or ``float16`` (half the
      bytes; greedy choices between near-tied tokens may flip).
    - ``direct_links``: stages hand hidden states straight to the next stage's volunteer
      when the two found each other over mDNS (:mod:`app.peers`), and the coordinator gets a
      copy; off, or where no direct link exists, the coordinator relays every hop.
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
    insecure_loopback: bool = False
    hot_spares: bool = True
    mdns: bool = False
    mdns_interfaces: tuple[str, ...] = ()
    max_pipelines: int = 1
    min_gain: float = 0.15
    rebalance_cooldown_s: float = 10.0
    load_timeout_s: float = 600.0
    recovery_attempts: int = 8
    admin_key: str | None = None
    http_max_body_bytes: int = 1 * 2**20
    http_idle_timeout_s: float = 75.0
    api_requests_per_minute: int = 60
    api_tokens_per_minute: int = 20_000
    ws_max_messages_per_s: float = 2000.0
    ws_burst_messages: int = 4000
    ws_max_bytes_per_s: int = 512 * 2**20
    ws_burst_bytes: int = 1 * 2**30
    ws_max_pending_handshakes_per_ip: int = 16
    verify_share: float = 0.05
    probation_steps: int = 64
    strikes_to_quarantine: int = 3
    wire_codec: str = "auto"
    wire_logits: str = "model"
    direct_links: bool = True

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
        if self.insecure_loopback:
            require_loopback(self.host, who="coordinator")
        if not 0.0 <= self.verify_share <= 1.0 or self.probation_steps < 0 or self.strikes_to_quarantine < 1:
            raise ConfigError(
                "result validation needs 0 <= verify_share <= 1, probation_steps >= 0 and strikes_to_quarantine >= 1"
            )
        for address in self.mdns_interfaces:
            if not _is_ipv4(address):
                raise ConfigError(f"mDNS interface {address!r} is not an IPv4 address", hint="give the interface's address, e.g. 192.168.1.20")
        self._check_limits()
        if self.wire_codec not in WIRE_CODECS or self.wire_logits not in LOGITS_CODECS:
            raise ConfigError(
                f"unknown wire codec {self.wire_codec!r} / logits codec {self.wire_logits!r}",
                hint=f"wire_codec is one of {', '.join(WIRE_CODECS)}; wire_logits one of {', '.join(LOGITS_CODECS)}",
            )

    def _check_limits(self) -> None:
        if self.admin_key is not None and len(self.admin_key.strip()) < 16:
            raise ConfigError("the admin key must have at least 16 characters", hint="leave it out to have one generated")
        if self.admin_key is not None and self.admin_key == self.api_key:
            raise ConfigError("the admin key and the API key must differ", hint="clients must not get admin rights")
        if self.handshake_timeout_s <= 0 or self.http_idle_timeout_s <= 0:
            raise ConfigError("handshake_timeout_s and http_idle_timeout_s must be positive")
        if self.http_max_body_bytes < 1024:
            raise ConfigError("http_max_body_bytes must be at least 1 KiB")
        if self.api_requests_per_minute < 0 or self.api_tokens_per_minute < 0:
            raise ConfigError("API rate limits must be 0 (unlimited) or positive")
        if self.ws_max_messages_per_s <= 0 or self.ws_burst_messages < 1:
            raise ConfigError("ws_max_messages_per_s and ws_burst_messages must be positive")
        if self.ws_max_bytes_per_s <= 0 or self.ws_burst_bytes < 1:
            raise ConfigError("ws_max_bytes_per_s and ws_burst_bytes must be positive")
        if self.ws_max_pending_handshakes_per_ip < 1:
            raise ConfigError("ws_max_pending_handshakes_per_ip must be at least 1")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
