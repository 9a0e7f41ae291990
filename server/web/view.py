"""The cluster view: one JSON-ready dict that the map page, ``butterfly status`` and ``/api/cluster`` share.

:func:`cluster_view` is pure: it joins the pool's own snapshot (``Pool.snapshot()``) with
the telemetry fold and the request queue, so every consumer sees the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.api.queue import QueueStats
from server.web.telemetry import Telemetry

HISTORY_DECIMALS = 2


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """Who this pool is and what its API needs, for the page's header and chat box."""

    pool_id: str
    name: str
    url: str
    model: str
    key_required: bool


def cluster_view(snapshot: Mapping[str, Any], *, info: PoolInfo, telemetry: Telemetry, queue: QueueStats, now: float) -> dict[str, Any]:
    """The pool as plain data: volunteers with live stats, pipelines, queue, throughput and events.

    ``snapshot`` is ``Pool.snapshot()``; every key it has is kept, and these are added:
    ``pool``, ``api``, ``queue``, ``throughput`` and per volunteer ``utilisation`` (0–1),
    ``step_ms`` and ``in_pipeline``.
    """
    volunteers = []
    for volunteer in snapshot.get("volunteers", []):
        stats = telemetry.nodes.get(str(volunteer.get("node_id")))
        volunteers.append(
            {
                **volunteer,
                "utilisation": round(stats.utilisation, 3) if stats else 0.0,
                "step_ms": None if stats is None or stats.step_s is None else round(stats.step_s * 1000, 2),
                "in_pipeline": bool(volunteer.get("layers")),
            }
        )
    return {
        **snapshot,
        "generated_at": now,
        "pool": {"id": info.pool_id, "name": info.name, "url": info.url},
        "api": {"model": info.model, "key_required": info.key_required},
        "volunteers": volunteers,
        "queue": {
            "waiting": queue.waiting,
            "running": queue.running,
            "capacity": queue.capacity,
            "max_queue": queue.max_queue,
        },
        "throughput": {
            "tokens_per_s": round(telemetry.tokens_per_s, 2),
            "tokens_total": telemetry.tokens_total,
            "stage_failures": telemetry.stage_failures,
            "history": [[round(t, 2), round(rate, HISTORY_DECIMALS)] for t, rate in telemetry.history],
        },
    }


def structure_key(view: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a view visibly different at once (members, plan, readiness, events, queue).

    The live stream pushes a new view as soon as this changes, and otherwise on its timer.
    """
    events = view.get("events") or []
    return (
        tuple((v.get("node_id"), v.get("draining"), tuple(map(tuple, v.get("layers", [])))) for v in view.get("volunteers", [])),
        tuple(tuple((s.get("node_id"), s.get("start"), s.get("end")) for s in p) for p in view.get("pipelines", [])),
        view.get("ready"),
        view.get("last_error"),
        len(events),
        events[-1].get("time") if events else None,
        tuple(sorted((view.get("queue") or {}).items())),
    )
