"""Benchmark: fuzz the wire protocol with 100,000+ generated inputs; none may crash it.

Runs the fuzz targets of ``tests/core/protocol/test_fuzz.py`` (the frame decoder, the
message parser, each end of the connection state machine, and both ends back to back)
through Hypothesis in generate-only mode, at a budget far above the test suite's. Every
input must be accepted or refused with a ``ButterflyError``; any other exception or a
broken property (an allocation beyond the input's allowance, an accepted frame past the
limits, a legal message the peer refuses) counts as a crash. Memory is traced per input
(tracemalloc, around each check only) and per run (RSS, which also holds Hypothesis's
own record of the inputs it generated). Writes ``docs/benchmarks/fuzz.json``; exits 1 on any crash.

    python scripts/bench_fuzz.py [--examples 100000] [--seed 0] [--targets frame_decoder,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_pipeline import machine  # noqa: E402

MAX_REPORTED_CRASHES = 5


def run_target(name: str, examples: int, seed: int) -> dict[str, Any]:
    """Feed ``examples`` generated inputs to one target; return its figures."""
    import psutil
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from tests.core.protocol.test_fuzz import TARGETS, FuzzFailure, Measured, allocation_allowance

    target = TARGETS[name]
    process = psutil.Process()
    outcomes: dict[str, int] = {}
    crashes: list[dict[str, str]] = []
    counts = {"inputs": 0, "crashes": 0, "property_failures": 0, "input_bytes": 0}
    worst = {"peak_bytes": 0, "input_bytes": 0, "ratio": 0.0}
    check_s = 0.0

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def fuzz(example: Any) -> None:
        nonlocal check_s
        counts["inputs"] += 1
        size = target.size(example)
        counts["input_bytes"] += size
        started = time.perf_counter()
        try:
            outcome: Measured = target.check(example)
        except Exception as exc:  # noqa: BLE001 - a crash is what this benchmark counts
            failure = isinstance(exc, FuzzFailure)
            counts["property_failures" if failure else "crashes"] += 1
            if len(crashes) < MAX_REPORTED_CRASHES:
                crashes.append({
                    "kind": "property" if failure else "crash",
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "where": traceback.format_exc(limit=-1).strip().splitlines()[-3][:300],
                    "input": repr(example)[:500],
                })
            return
        finally:
            check_s += time.perf_counter() - started
        outcomes[outcome.label] = outcomes.get(outcome.label, 0) + 1
        if outcome.peak_bytes > worst["peak_bytes"]:
            worst.update(peak_bytes=outcome.peak_bytes, input_bytes=size)
        if isinstance(example, (bytes, tuple)):
            data = example if isinstance(example, bytes) else example[0]
            worst["ratio"] = max(worst["ratio"], outcome.peak_bytes / allocation_allowance(data))

    rss_before = process.memory_info().rss
    started = time.perf_counter()
    fuzz()  # each check runs under its own tracemalloc session (see ``measured``); generation is not traced
    seconds = time.perf_counter() - started
    rss_after = process.memory_info().rss
    return {
        "inputs": counts["inputs"],
        "seconds": round(seconds, 2),
        "inputs_per_s": round(counts["inputs"] / seconds, 1),
        "checks_per_s": round(counts["inputs"] / check_s, 1) if check_s else None,
        "mean_input_bytes": round(counts["input_bytes"] / max(counts["inputs"], 1), 1),
        "crashes": counts["crashes"],
        "property_failures": counts["property_failures"],
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
        "max_alloc_per_input_bytes": worst["peak_bytes"],
        "max_alloc_input_bytes": worst["input_bytes"],
        "max_alloc_to_allowance": round(worst["ratio"], 4) if worst["ratio"] else None,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "first_crashes": crashes,
    }


def main() -> None:
    from tests.core.protocol.test_fuzz import (
        ALLOCATION_SLACK,
        BODY_EXPANSION,
        HEADER_EXPANSION,
        TARGETS,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000, help="generated inputs in all, split over the targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: " + ", ".join(TARGETS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "fuzz.json")
    args = parser.parse_args()
    names = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    warnings.simplefilter("ignore")  # Hypothesis warns about the size of reprs it never prints here

    import torch

    torch.set_num_threads(1)
    per_target = {n: args.examples // len(names) + (1 if i < args.examples % len(names) else 0) for i, n in enumerate(names)}
    results: dict[str, Any] = {}
    for name in names:
        print(f"{name}: {per_target[name]} inputs ...", flush=True)
        results[name] = run_target(name, per_target[name], args.seed)
        r = results[name]
        print(f"  {r['inputs']} inputs in {r['seconds']} s ({r['inputs_per_s']}/s), crashes {r['crashes']}, "
              f"property failures {r['property_failures']}, max alloc/input {r['max_alloc_per_input_bytes']} B, "
              f"RSS {r['rss_before_bytes'] >> 20} -> {r['rss_after_bytes'] >> 20} MiB", flush=True)
    total_inputs = sum(r["inputs"] for r in results.values())
    total_crashes = sum(r["crashes"] + r["property_failures"] for r in results.values())
    out = {
        "benchmark": "property-based fuzzing of the wire protocol (frames, messages, state machine)",
        "machine": machine(),
        "hypothesis": _version("hypothesis"),
        "seed": args.seed,
        "property": "every input is accepted or refused with a ButterflyError; allocation per input stays "
                    "within its allowance; accepted input is within the limits and re-encodes; what one end "
                    "legally sends the other accepts",
        "allowance": f"{BODY_EXPANSION} x input bytes + {HEADER_EXPANSION} x header bytes + {ALLOCATION_SLACK} bytes",
        "inputs": total_inputs,
        "crashes": total_crashes,
        "targets": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "targets"}, indent=2))
    if total_crashes:
        sys.exit(1)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
