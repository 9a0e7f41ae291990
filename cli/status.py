"""``butterfly status``: the pool as a readable table in the terminal (or as JSON).

It reads the coordinator's ``/api/cluster`` view, the same data the cluster map draws.
:func:`render_status` is pure, so its layout is tested without a pool.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import PoolUnavailable

RECENT_EVENTS = 10


def fetch_view(url: str, *, timeout: float = 10.0, pool_id: str | None = None) -> dict[str, Any]:
    """GET ``<url>/api/cluster`` (https pinned to ``pool_id``); raises :class:`PoolUnavailable` when unreachable."""
    from cli.https import open_url

    target = url.rstrip("/") + "/api/cluster"
    try:
        with open_url(target, pool_id=pool_id, timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise PoolUnavailable(f"the coordinator at {url} answered {exc.code}", hint="is it a Butterfly coordinator?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PoolUnavailable(f"cannot reach the coordinator at {url}: {reason}", hint="is it running?") from None
    except ValueError as exc:
        raise PoolUnavailable(f"the coordinator at {url} sent no JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoolUnavailable(f"the coordinator at {url} sent an unexpected answer")
    return data


def run_status(args: argparse.Namespace) -> int:
    """Print the pool's state once (``--json``: the raw view)."""
    view = fetch_view(args.url, pool_id=args.pool_id)
    if args.json:
        json.dump(view, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_status(view))
    return 0


def render_status(view: Mapping[str, Any], *, local_time: bool = True) -> str:
    """The view as text: a header, the volunteers table, the pipelines and recent events."""
    pool = view.get("pool") or {}
    model = view.get("model") or {}
    queue = view.get("queue") or {}
    throughput = view.get("throughput") or {}
    volunteers = view.get("volunteers") or []
    pipelines = view.get("pipelines") or []
    state = "ready" if view.get("ready") else "not ready"
    lines = [
        f"{pool.get('name', 'Butterfly pool')}  ({pool.get('id', '?')})",
        f"  model   {model.get('name', '?')}, {model.get('layers', '?')} layers — {state}"
        + (f": {view['last_error']}" if view.get("last_error") else ""),
        f"  serving {len(volunteers)} volunteer{_s(len(volunteers))}, {len(pipelines)} pipeline{_s(len(pipelines))}; "
        f"{float(throughput.get('tokens_per_s', 0.0)):.1f} tokens/s, {int(throughput.get('tokens_total', 0))} tokens in all, "
        f"{int(throughput.get('stage_failures', 0))} stage failure{_s(int(throughput.get('stage_failures', 0)))}",
        f"  queue   {queue.get('running', 0)} running, {queue.get('waiting', 0)} waiting "
        f"(room for {queue.get('capacity', 0)} running, {queue.get('max_queue', 0)} waiting)",
        "",
    ]
    if volunteers:
        rows = [("VOLUNTEER", "DEVICE", "OS", "MEMORY", "RTT", "LAYERS", "STEPS", "DIRECT", "STEP", "BUSY", "TRUST", "STATE")]
        layers = model.get("layers")
        for v in volunteers:
            rows.append(
                (
                    str(v.get("name", "?")),
                    str(v.get("device", "?")),
                    str(v.get("os", "") or "?"),
                    _gib(v.get("memory_bytes")),
                    _ms(v.get("rtt_ms")),
                    _ranges(v.get("layers") or []),
                    str(v.get("steps", 0)),
                    _direct(v, layers),
                    _ms(v.get("step_ms")),
                    f"{round(float(v.get('utilisation') or 0.0) * 100)}%",
                    _trust(v),
                    "quarantined" if v.get("trust") == "quarantined"
                    else "draining" if v.get("draining") else ("serving" if v.get("layers") else "idle"),
                )
            )
        lines += _table(rows)
    else:
        lines.append("  no volunteers connected")
    lines.append("")
    if pipelines:
        lines.append("PIPELINES")
        for i, stages in enumerate(pipelines):
            chain = " → ".join(f"{s.get('name', '?')} [{s.get('start')}, {s.get('end')})" for s in stages)
            lines.append(f"  {i}: {chain}")
        lines.append("")
    events = list(view.get("events") or [])[-RECENT_EVENTS:]
    if events:
        lines.append("RECENT EVENTS")
        for e in events:
            stamp = _clock(e.get("time"), local_time=local_time)
            lines.append(f"  {stamp}  {str(e.get('kind', '')):<10} {e.get('text', '')}")
        lines.append("")
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _direct(volunteer: Mapping[str, Any], layers: object) -> str:
    """The share of steps handed straight to the next stage; "pool" for a last stage, which answers the coordinator."""
    if any(r[1] == layers for r in volunteer.get("layers") or []):
        return "pool"
    steps = int(volunteer.get("steps") or 0)
    return f"{round(100 * int(volunteer.get('handed_off_steps') or 0) / steps)}%" if steps else "–"


def _trust(volunteer: Mapping[str, Any]) -> str:
    """``trusted``, ``probation`` or ``quarantined``, with the strikes when there are any."""
    state = str(volunteer.get("trust") or "–")
    strikes = volunteer.get("strikes")
    return f"{state} ({strikes} strike{_s(strikes)})" if isinstance(strikes, int) and strikes else state


def _gib(value: object) -> str:
    return f"{float(value) / 2**30:.1f} GiB" if isinstance(value, (int, float)) and value else "?"


def _ms(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _ranges(layers: Sequence[Sequence[int]]) -> str:
    return " ".join(f"[{a}, {b})" for a, b in layers) if layers else "–"


def _clock(stamp: object, *, local_time: bool) -> str:
    if not isinstance(stamp, (int, float)):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(stamp) if local_time else time.gmtime(stamp))
