"""The agent's state as one immutable snapshot, for the tray, the status window and the CLI.

The agent publishes a new :class:`AgentStatus` whenever something changes; front ends
only read it. :func:`diagnostics_text` turns one into the text "Copy diagnostics" puts
on the clipboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from app.discovery import DiscoveredPool

THROUGHPUT_SAMPLES: Final = 120
"""Samples kept for the throughput graph (one per second: the last two minutes)."""

LOG_LINES: Final = 200
"""Log lines kept for the status window."""


class Activity(StrEnum):
    """What the agent is doing, from the user's point of view."""

    IDLE = "idle"
    """In no pool."""
    STARTING = "starting"
    """The compute process is starting and measuring this machine."""
    CONNECTING = "connecting"
    LOADING = "loading"
    """Connected; waiting for an assignment or downloading its layers."""
    SERVING = "serving"
    WAITING = "waiting"
    """The policy holds compute back (battery, schedule, the user is busy)."""
    PAUSED = "paused"
    """Paused or snoozed by the user."""
    FINISHING = "finishing"
    """Finishing the work in hand before pausing or leaving."""
    DISCONNECTED = "disconnected"
    """Lost the pool; trying again."""
    ERROR = "error"
    """Something needs the user (refused by the pool, the compute process failed)."""


@dataclass(frozen=True, slots=True)
class PoolRef:
    """The pool the agent is in (or joining)."""

    pool_id: str
    name: str
    url: str
    model: str = ""

    @property
    def http_url(self) -> str:
        """The coordinator's web address (the cluster map), derived from its websocket."""
        base = self.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        return base.removesuffix("/ws") + "/"


class HostingPhase(StrEnum):
    """Where a pool hosted from this app stands."""

    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Hosting:
    """A coordinator started from this app."""

    phase: HostingPhase
    pool_name: str
    model: str
    url: str = ""
    ws_url: str = ""
    invite: str = ""
    pool_id: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class LayerSpan:
    """Layers ``[start, end)`` of a model with ``total`` layers that this machine serves."""

    start: int
    end: int
    total: int

    def __str__(self) -> str:
        return f"{self.start + 1}–{self.end} of {self.total}" if self.end - self.start > 1 else f"{self.end} of {self.total}"


@dataclass(frozen=True, slots=True)
class BenchmarkLine:
    """One measured model layer shape on this machine (from the benchmark cache)."""

    architecture: str
    dtype: str
    device: str
    threads: int
    seconds_per_layer: float


@dataclass(frozen=True, slots=True)
class MachineSummary:
    """This machine as the compute process measured it."""

    cpu_model: str
    physical_cores: int
    logical_cores: int
    total_memory_bytes: int
    accelerator: str
    os_label: str
    devices: tuple[str, ...] = ("cpu",)
    seconds_per_layer: float = 0.0
    """The quick estimate: one decode step through a small reference layer."""
    threads: int = 0
    memory_offered_bytes: int = 0
    benchmarks: tuple[BenchmarkLine, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Everything the front ends show, as of one moment.

    ``detail`` says in words why the agent is in ``activity``. ``paused_until`` is set
    while a snooze runs (None with PAUSED means until resumed). ``tokens_per_s`` is the
    recent rate of forward steps served (one step moves one token of one session through
    this machine's layers); ``throughput`` holds one such sample per second, oldest
    first. ``uptime_s`` counts the current connection.
    """

    activity: Activity = Activity.IDLE
    detail: str = ""
    pool: PoolRef | None = None
    discovered: tuple[DiscoveredPool, ...] = ()
    discovery_note: str = ""
    paused_until: datetime | None = None
    layers: tuple[LayerSpan, ...] = ()
    steps_served: int = 0
    tokens_per_s: float = 0.0
    throughput: tuple[float, ...] = ()
    uptime_s: float = 0.0
    error: str = ""
    hosting: Hosting | None = None
    machine: MachineSummary | None = None
    log: tuple[str, ...] = ()


def format_bytes(n: int) -> str:
    """``1536 MiB`` -> ``"1.5 GiB"``: bytes for people, binary units."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1 h 02 min"``; ``75`` -> ``"1 min 15 s"``."""
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def diagnostics_text(status: AgentStatus, *, app_version: str, platform: str) -> str:
    """A plain-text report of ``status`` for bug reports: state, pool, machine, then the log.

    It names the pool id and addresses but never an invite (a secret).
    """
    lines = [
        f"Butterfly {app_version} on {platform}",
        f"activity: {status.activity.value} — {status.detail}",
    ]
    if status.error:
        lines.append(f"error: {status.error}")
    if status.pool is not None:
        lines.append(f"pool: {status.pool.name} ({status.pool.pool_id}) at {status.pool.url}, model {status.pool.model or '?'}")
    if status.layers:
        lines.append("layers: " + ", ".join(str(span) for span in status.layers))
    lines.append(f"steps served: {status.steps_served}; {status.tokens_per_s:.1f} tokens/s; connected {format_duration(status.uptime_s)}")
    if status.hosting is not None:
        h = status.hosting
        lines.append(f"hosting: {h.pool_name} ({h.phase.value}) {h.url} {h.error}".rstrip())
    if status.machine is not None:
        m = status.machine
        lines.append(
            f"machine: {m.cpu_model}, {m.physical_cores}/{m.logical_cores} cores, {format_bytes(m.total_memory_bytes)} RAM, "
            f"{m.accelerator}, {m.os_label}; quick benchmark {m.seconds_per_layer * 1000:.2f} ms/layer on {m.threads} threads"
        )
        for b in m.benchmarks:
            lines.append(f"  benchmark {b.architecture} {b.dtype} {b.device} x{b.threads}: {b.seconds_per_layer * 1000:.2f} ms/layer")
    lines.append(f"pools seen on the network: {len(status.discovered)}" + (f" ({status.discovery_note})" if status.discovery_note else ""))
    lines.append("")
    lines.append("log:")
    lines.extend(status.log)
    return "\n".join(lines) + "\n"
