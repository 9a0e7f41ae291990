"""A quick, honest estimate of what this machine offers, taken before joining a pool.

The volunteer does not know the pool's model before it joins, so this times a decode-
shaped workload (matrix-vector products the size of a small Llama layer) on the real
device and dtype, and reports memory the user allows. The coordinator plans with these
numbers; the full per-model benchmark refines them.
"""

from __future__ import annotations

import os
import platform
import time

import psutil
import torch

from core.types import HardwareProfile, NodeId

# A small Llama layer (hidden 576, intermediate 1536, GQA 9/3 heads): the decode step's weights.
_REFERENCE_SHAPES = ((576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576))


def measure_seconds_per_layer(*, dtype: torch.dtype = torch.float32, repeats: int = 30) -> float:
    """Median time of one decode step through a reference-sized layer on this CPU."""
    weights = [torch.randn(a, b, dtype=dtype) for a, b in _REFERENCE_SHAPES]
    x = torch.randn(1, 576, dtype=dtype)
    h = torch.randn(1, 1536, dtype=dtype)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            (h if w.shape[0] == 1536 else x) @ w
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def quick_profile(*, memory_bytes: int | None = None, threads: int | None = None, name: str = "") -> HardwareProfile:
    """This machine's profile: CPU, a memory cap (default: half of available RAM) and measured speed."""
    if threads:
        torch.set_num_threads(threads)
    available = psutil.virtual_memory().available
    cap = memory_bytes if memory_bytes is not None else available // 2
    return HardwareProfile(
        node_id=NodeId(""),
        device="cpu",
        memory_bytes=int(min(cap, available)),
        seconds_per_layer=measure_seconds_per_layer(),
        threads=torch.get_num_threads(),
        name=name or platform.node() or f"volunteer-{os.getpid()}",
        os=f"{platform.system()} {platform.release()}",
    )
