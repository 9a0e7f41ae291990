"""The :class:`~core.types.HardwareProfile` a volunteer reports, from what it probed and measured."""

from __future__ import annotations

import torch

from app.hardware.benchmark import LayerBenchmark
from app.hardware.probe import MachineInfo
from core.errors import ConfigError
from core.types import HardwareProfile, NodeId


def device_memory_bytes(info: MachineInfo, device: str) -> int:
    """Memory ``device`` has for Butterfly: a CUDA device's total memory, else available RAM (0 if unknown).

    Apple MPS shares the unified RAM, so it counts as RAM.
    """
    parsed = torch.device(device)
    if parsed.type == "cuda":
        index = parsed.index or 0
        for d in info.cuda_devices:
            if d.index == index:
                return d.total_memory_bytes
        return 0
    return info.available_memory_bytes


def build_profile(info: MachineInfo, bench: LayerBenchmark, *, memory_cap_bytes: int, name: str,
                  node_id: NodeId = NodeId("")) -> HardwareProfile:
    """The profile of this machine serving the benchmarked model on ``bench.device``.

    ``memory_bytes`` is the smaller of the user's cap and what the device has; when the
    device's memory could not be probed, the cap alone. ``seconds_per_layer`` is the decode
    time. ``node_id`` is usually filled in by the session once the identity is known.
    """
    if memory_cap_bytes < 0:
        raise ConfigError(f"memory cap must not be negative, got {memory_cap_bytes}",
                          hint="set a memory cap in bytes, or 0 to offer none")
    has = device_memory_bytes(info, bench.device)
    memory = min(memory_cap_bytes, has) if has > 0 else memory_cap_bytes
    return HardwareProfile(
        node_id=node_id,
        device=torch.device(bench.device).type,
        memory_bytes=memory,
        seconds_per_layer=bench.seconds_per_layer_decode,
        prefill_seconds_per_layer=bench.seconds_per_layer_prefill,
        prefill_tokens=bench.prefill_tokens,
        threads=bench.threads,
        name=name,
        os=info.os_label,
    )
