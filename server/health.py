"""Health of volunteers, as pure functions of observations and ``now``.

Three signals, from fastest to slowest:

- a closed socket is immediate (the link's reader sees it; nothing to decide here);
- a *stall*: one step takes far longer than that stage has been observed to take —
  :func:`stall_timeout_s` gives the deadline for a step of ``tokens`` tokens;
- *silence*: no message at all (heartbeats included) for ``heartbeat_timeout_s``.

Sustained slowdown (or speed-up) feeds re-planning: :class:`SpeedWatch` reports when a
volunteer's observed seconds per layer have stayed at least ``threshold`` away from
what the current plan assumed for a whole ``window_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

EMA_ALPHA = 0.2
"""Weight of a new sample in the moving averages."""
STALL_FACTOR = 10.0
"""A step is stalled after this many times its expected duration …"""
STALL_FLOOR_S = 3.0
"""… but never before this many seconds (scheduling noise on a busy machine) …"""
STALL_CEILING_S = 60.0
"""… and always after this many (a configured maximum replaces it)."""
SLOWDOWN_THRESHOLD = 1.25
"""Observed/planned ratio (or its inverse) that counts as a real change of speed."""
SLOWDOWN_WINDOW_S = 2.0
"""How long the change must last before the pool re-plans."""
MIN_SAMPLES = 3
"""Steps observed before a volunteer's averages are trusted."""


def ema(previous: float | None, sample: float, *, alpha: float = EMA_ALPHA) -> float:
    """Exponential moving average; the first sample is taken as is."""
    if previous is None or not math.isfinite(previous):
        return sample
    return previous + alpha * (sample - previous)


@dataclass(frozen=True, slots=True)
class StepTimes:
    """A volunteer's observed step times: per decode step and per prefill token, per layer."""

    decode_s_per_layer: float | None = None
    prefill_s_per_token_layer: float | None = None
    samples: int = 0

    def observe(self, *, compute_s: float, tokens: int, layers: float) -> StepTimes:
        """Fold in one step's measured compute time."""
        if tokens <= 0 or layers <= 0 or not math.isfinite(compute_s) or compute_s < 0:
            return self
        per_layer = compute_s / layers
        if tokens == 1:
            return replace(self, decode_s_per_layer=ema(self.decode_s_per_layer, per_layer), samples=self.samples + 1)
        return replace(self, prefill_s_per_token_layer=ema(self.prefill_s_per_token_layer, per_layer / tokens))

    def expected_s(self, *, tokens: int, layers: float, fallback_s_per_layer: float) -> float:
        """Expected compute time of a step of ``tokens`` tokens through ``layers`` layers."""
        decode = self.decode_s_per_layer if self.decode_s_per_layer is not None else fallback_s_per_layer
        if tokens <= 1:
            return decode * layers
        per_token = self.prefill_s_per_token_layer if self.prefill_s_per_token_layer is not None else decode
        return max(decode, per_token * tokens) * layers


def stall_timeout_s(
    expected_s: float,
    *,
    rtt_s: float = 0.0,
    factor: float = STALL_FACTOR,
    floor_s: float = STALL_FLOOR_S,
    ceiling_s: float = STALL_CEILING_S,
) -> float:
    """How long to wait for a step expected to take ``expected_s`` before calling it stalled."""
    if not math.isfinite(expected_s) or expected_s <= 0:
        return ceiling_s
    return min(ceiling_s, max(floor_s, factor * expected_s + 2 * rtt_s))


def is_silent(last_seen: float, now: float, *, timeout_s: float) -> bool:
    """True when nothing has been heard from a peer for longer than ``timeout_s``."""
    return now - last_seen > timeout_s


@dataclass(frozen=True, slots=True)
class SpeedWatch:
    """Tracks whether a volunteer runs persistently slower or faster than planned.

    ``since`` is when the current deviation began (``None``: within bounds).
    """

    since: float | None = None
    direction: int = 0

    def observe(
        self,
        *,
        planned_s: float,
        observed_s: float | None,
        now: float,
        threshold: float = SLOWDOWN_THRESHOLD,
        window_s: float = SLOWDOWN_WINDOW_S,
    ) -> tuple[SpeedWatch, bool]:
        """Return the new watch and whether the deviation has lasted a whole window.

        A triggered watch resets, so one sustained change triggers one re-plan.
        """
        if observed_s is None or planned_s <= 0 or not math.isfinite(planned_s):
            return SpeedWatch(), False
        ratio = observed_s / planned_s
        direction = 1 if ratio >= threshold else -1 if ratio <= 1 / threshold else 0
        if direction == 0:
            return SpeedWatch(), False
        if direction != self.direction or self.since is None:
            return SpeedWatch(since=now, direction=direction), False
        if now - self.since >= window_s:
            return SpeedWatch(), True
        return self, False
