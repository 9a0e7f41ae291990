"""Benchmark: the exact planner's speed, and its bottleneck against simple baselines.

1. Planning time for 1,000 volunteers and an 80-layer model (target: under 100 ms),
   median of several runs, on a memory-bound pool (each volunteer holds a few
   layers) and a memory-rich one (anyone could hold the whole model, the largest
   candidate set).
2. On seeded random heterogeneous pools (GPUs, Apple-silicon laptops and CPU-only
   machines, on a LAN or behind home links), the bottleneck stage time of
   ``plan()`` vs a uniform split, a memory-proportional split, a speed-proportional
   split and greedy per-layer bin-packing (which breaks contiguity; its hops and
   busiest volunteer are reported honestly, see ``greedy_binpack_plan``).

Speeds are derived from each device's memory bandwidth (decode reads every weight
once per token). Writes ``docs/benchmarks/planner.json``.

    python scripts/bench_planner.py [--runs 7] [--out docs/benchmarks/planner.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.errors import ButterflyError  # noqa: E402
from core.types import HardwareProfile, ModelSpec, NodeId, Plan  # noqa: E402
from server.planner import (  # noqa: E402
    fits_memory,
    greedy_binpack_plan,
    memory_proportional_plan,
    plan,
    proportional_plan,
    uniform_plan,
)

GB = 10**9
GIB = 1 << 30

MODELS = {
    # bf16; tied embeddings counted on both ends, as ModelSpec does.
    "smollm2-135m-bf16": ModelSpec(
        "smollm2-135m-bf16", 30, layer_bytes=7_077_888, embed_bytes=56_623_104, head_bytes=56_623_104,
        kv_bytes_per_token_layer=768, activation_bytes=1_152,
    ),
    "llama2-7b-bf16": ModelSpec(
        "llama2-7b-bf16", 32, layer_bytes=404_750_336, embed_bytes=262_144_000, head_bytes=262_144_000,
        kv_bytes_per_token_layer=16_384, activation_bytes=8_192,
    ),
    "llama2-70b-q4": ModelSpec(
        "llama2-70b-q4", 80, layer_bytes=482_000_000, embed_bytes=147_456_000, head_bytes=147_456_000,
        kv_bytes_per_token_layer=4_096, activation_bytes=16_384,
    ),
}

# (share of the pool, memory bandwidth GB/s, memory the user lends in GiB)
DEVICES = {
    "gpu": (0.15, (300.0, 1000.0), (8, 24)),
    "mps": (0.25, (100.0, 400.0), (8, 32)),
    "cpu": (0.60, (15.0, 60.0), (4, 32)),
}
# (share of the pool, rtt seconds, bandwidth bytes/s)
LINKS = {
    "lan": (0.4, (0.0005, 0.003), (50e6, 120e6)),
    "wan": (0.6, (0.015, 0.080), (1e6, 30e6)),
}


def machine() -> dict[str, object]:
    """Where the benchmark ran."""
    from app.hardware.probe import cpu_model

    cpu = cpu_model(platform.system())
    import numpy

    return {
        "cpu": cpu,
        "processor": platform.processor(),
        "uname": platform.uname()._asdict(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }


def pick(rng: random.Random, table: dict[str, tuple]) -> tuple:
    """A row of ``table`` drawn by its share."""
    names = list(table)
    return table[rng.choices(names, weights=[table[n][0] for n in names])[0]]


def random_pool(
    model: ModelSpec, size: int, rng: random.Random, memory_scale: float = 1.0, links: str = "mixed"
) -> list[HardwareProfile]:
    """``size`` volunteers of mixed devices; links mixed or all ``"lan"``; memory times ``memory_scale``."""
    pool = []
    for _ in range(size):
        _, bandwidth, memory = pick(rng, DEVICES)
        _, rtt, link = pick(rng, LINKS) if links == "mixed" else LINKS[links]
        seconds = model.layer_bytes / (rng.uniform(*bandwidth) * GB)
        pool.append(
            HardwareProfile(
                NodeId(f"{rng.getrandbits(64):016x}"),
                memory_bytes=int(rng.randint(*memory) * GIB * memory_scale),
                seconds_per_layer=seconds,
                rtt_s=rng.uniform(*rtt),
                bandwidth_bytes_per_s=rng.uniform(*link),
            )
        )
    return pool


def time_plan(
    model: ModelSpec, pool: list[HardwareProfile], runs: int, **kwargs: object
) -> dict[str, object]:
    """Median and spread of ``plan()`` wall time over ``runs`` runs."""
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = plan(model, pool, **kwargs)
        times.append(time.perf_counter() - start)
    assert result is not None
    return {
        "median_ms": round(statistics.median(times) * 1e3, 3),
        "min_ms": round(min(times) * 1e3, 3),
        "max_ms": round(max(times) * 1e3, 3),
        "runs": runs,
        "pipelines": len(result.pipelines),
        "stages_first_pipeline": len(result.pipelines[0].stages),
        "bottleneck_s": result.bottleneck_s,
    }


def describe(
    model: ModelSpec, pool: list[HardwareProfile], make: Callable[[ModelSpec, list[HardwareProfile]], Plan]
) -> dict[str, object]:
    """One planner's result on one pool, or the error it raised."""
    try:
        result = make(model, pool)
    except ButterflyError as exc:
        return {"error": f"{type(exc).__name__}: {exc.message}"}
    stages = result.pipelines[0].stages
    return {
        "bottleneck_s": result.bottleneck_s,
        "stages": len(stages),
        "hops": len(stages) - 1,
        "volunteers_used": len({s.node_id for s in stages}),
        "fits_memory": fits_memory(model, result, {v.node_id: v for v in pool}),
    }


BASELINES: dict[str, Callable[[ModelSpec, list[HardwareProfile]], Plan]] = {
    "uniform": uniform_plan,
    "memory_proportional": memory_proportional_plan,
    "speed_proportional": proportional_plan,
    "greedy_binpack": greedy_binpack_plan,
}

SCENARIOS = [
    # (model, volunteers, seed, links): "mixed" pools put LAN and home links together, so part of
    # the gain is leaving slow links out; "lan" pools isolate the effect of balancing compute.
    ("smollm2-135m-bf16", 4, 1, "mixed"),
    ("smollm2-135m-bf16", 12, 2, "mixed"),
    ("llama2-7b-bf16", 6, 3, "mixed"),
    ("llama2-7b-bf16", 16, 4, "mixed"),
    ("llama2-7b-bf16", 64, 5, "mixed"),
    ("llama2-70b-q4", 24, 6, "mixed"),
    ("llama2-70b-q4", 100, 7, "mixed"),
    ("llama2-70b-q4", 1000, 8, "mixed"),
    ("smollm2-135m-bf16", 6, 9, "lan"),
    ("llama2-7b-bf16", 8, 10, "lan"),
    ("llama2-70b-q4", 24, 11, "lan"),
    ("llama2-70b-q4", 200, 12, "lan"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "planner.json")
    args = parser.parse_args()

    big = MODELS["llama2-70b-q4"]
    timing = {
        "memory_bound_1000x80": time_plan(big, random_pool(big, 1000, random.Random(100)), args.runs),
        "memory_rich_1000x80": time_plan(big, random_pool(big, 1000, random.Random(101), 20.0), args.runs),
        "memory_bound_1000x80_8_pipelines": time_plan(
            big, random_pool(big, 1000, random.Random(100)), args.runs, max_pipelines=8
        ),
    }
    for name, row in timing.items():
        print(f"{name}: median {row['median_ms']} ms over {row['runs']} runs")

    pools = []
    for model_name, size, seed, links in SCENARIOS:
        model = MODELS[model_name]
        pool = random_pool(model, size, random.Random(seed), links=links)
        ours = describe(model, pool, plan)
        row: dict[str, object] = {
            "model": model_name,
            "layers": model.num_layers,
            "volunteers": size,
            "seed": seed,
            "links": links,
            "ours": ours,
        }
        for name, make in BASELINES.items():
            other = describe(model, pool, make)
            if "bottleneck_s" in other and "bottleneck_s" in ours:
                other["ours_speedup"] = round(other["bottleneck_s"] / ours["bottleneck_s"], 3)
            row[name] = other
        pools.append(row)
        print(
            f"{model_name} x{size} {links}: ours {ours.get('bottleneck_s', ours.get('error'))}"
            + "".join(f", {n} x{row[n].get('ours_speedup', '-')}" for n in BASELINES)
        )

    report = {
        "benchmark": "planner",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "target": "plan() for 1000 volunteers x 80 layers under 100 ms (median)",
        "timing": timing,
        "pools": pools,
        "notes": (
            "bottleneck_s is the slowest stage's estimated decode-step time (compute + transfer), "
            "ours_speedup = baseline bottleneck / ours. fits_memory false means the baseline's split "
            "would not fit some volunteer (uniform ignores memory). greedy_binpack breaks contiguity: "
            "each run of layers is a stage, and each stage is charged its volunteer's whole per-token time."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
