"""Reconnect delays: exponential backoff with full jitter, as a pure function.

Full jitter (a uniform draw between 0 and the exponential cap) spreads the reconnects of
many volunteers after a coordinator restart, so they do not all knock at once.
"""

from __future__ import annotations

import random

BASE_S = 0.5
"""The first retry waits up to this long."""
CAP_S = 30.0
"""No retry waits longer than this."""


def backoff_delay(attempt: int, *, rng: random.Random, base_s: float = BASE_S, cap_s: float = CAP_S) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in [0, min(cap, base·2^attempt)]."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap_s, base_s * (2.0 ** min(attempt, 62)))
    return rng.uniform(0.0, ceiling)
