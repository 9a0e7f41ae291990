"""The cluster view joins the pool snapshot, telemetry and queue; the push key sees what matters."""

from __future__ import annotations

from server.api.queue import QueueStats
from server.web.telemetry import NodeStats, Telemetry
from server.web.view import PoolInfo, cluster_view, structure_key

SNAPSHOT = {
    "model": {"id": "m-1", "name": "M", "layers": 4},
    "ready": True,
    "last_error": None,
    "volunteers": [
        {"node_id": "a", "name": "alpha", "layers": [[0, 2]], "steps": 3, "draining": False},
        {"node_id": "b", "name": "beta", "layers": [], "steps": 0, "draining": False},
    ],
    "pipelines": [[{"node_id": "a", "name": "alpha", "start": 0, "end": 2}]],
    "events": [{"time": 1.0, "kind": "join", "text": "alpha joined"}],
}
INFO = PoolInfo(pool_id="p", name="Pool", url="http://x", model="M", key_required=True)


def view(**kw):  # noqa: ANN003, ANN201
    telemetry = Telemetry(
        nodes={"a": NodeStats(utilisation=0.4567, step_s=0.01234)},
        tokens_total=9,
        stage_failures=1,
        history=((10.0, 2.0), (10.5, 4.0)),
    )
    args = dict(info=INFO, telemetry=telemetry, queue=QueueStats(running=1, waiting=2, capacity=8, max_queue=32), now=11.0)
    args.update(kw)
    return cluster_view(SNAPSHOT, **args)


def test_view_keeps_the_snapshot_and_adds_live_numbers() -> None:
    v = view()
    assert v["model"] == SNAPSHOT["model"] and v["pipelines"] == SNAPSHOT["pipelines"] and v["events"] == SNAPSHOT["events"]
    assert v["pool"] == {"id": "p", "name": "Pool", "url": "http://x"}
    assert v["api"] == {"model": "M", "key_required": True}
    assert v["queue"] == {"waiting": 2, "running": 1, "capacity": 8, "max_queue": 32}
    a, b = v["volunteers"]
    assert (a["utilisation"], a["step_ms"], a["in_pipeline"], a["name"]) == (0.457, 12.34, True, "alpha")
    assert (b["utilisation"], b["step_ms"], b["in_pipeline"]) == (0.0, None, False)
    assert v["throughput"] == {"tokens_per_s": 4.0, "tokens_total": 9, "stage_failures": 1, "history": [[10.0, 2.0], [10.5, 4.0]]}
    assert v["generated_at"] == 11.0


def test_structure_key_ignores_numbers_that_move_every_tick() -> None:
    base = view()
    busier = view(telemetry=Telemetry(tokens_total=500), now=99.0)
    assert structure_key(base) == structure_key(busier)
    queued = view(queue=QueueStats(running=1, waiting=3, capacity=8, max_queue=32))
    assert structure_key(base) != structure_key(queued)
    changed = dict(base, volunteers=base["volunteers"][:1])
    assert structure_key(base) != structure_key(changed)
    newer = dict(base, events=[*base["events"], {"time": 2.0, "kind": "leave", "text": "beta left"}])
    assert structure_key(base) != structure_key(newer)
