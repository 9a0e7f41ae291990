"""Which pipeline a new generation session joins.

Cost model: sessions on one pipeline interleave their decode steps, and the
bottleneck stage serves one step of every active session in turn. A session that
joins a pipeline with bottleneck ``b`` and ``n`` active sessions therefore gets a
token about every ``(n + 1) * b`` seconds, and finishes soonest on the pipeline
where that product is smallest. This ignores the pipeline's fill latency (the sum
of its stage times), which the planner already keeps low by preferring fewer stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.errors import ConfigError, PoolUnavailable


def route(pipeline_loads: Sequence[tuple[float, int]], *, max_sessions: int | None = None) -> int:
    """Index of the pipeline on which a new session finishes soonest.

    ``pipeline_loads`` holds ``(bottleneck_s, active_sessions)`` per pipeline. The
    pick minimises ``(active_sessions + 1) * bottleneck_s``; ties go to fewer active
    sessions, then to the lower index. Pipelines with an unusable bottleneck
    (infinite, NaN, negative) or with ``max_sessions`` active sessions already
    (their KV budget) are passed over. Raises :class:`PoolUnavailable` when none can
    take the session and :class:`ConfigError` for a negative session count.
    """
    best: tuple[float, int, int] | None = None
    for index, (bottleneck, active) in enumerate(pipeline_loads):
        if active < 0:
            raise ConfigError(
                f"pipeline {index} reports {active} active sessions",
                hint="count sessions from the router's own bookkeeping",
            )
        if not (math.isfinite(bottleneck) and bottleneck >= 0):
            continue
        if max_sessions is not None and active >= max_sessions:
            continue
        key = ((active + 1) * bottleneck, active, index)
        if best is None or key < best:
            best = key
    if best is None:
        raise PoolUnavailable(
            f"none of {len(pipeline_loads)} pipelines can take another session",
            hint="wait for a session to finish or add volunteers for another pipeline",
        )
    return best[2]
