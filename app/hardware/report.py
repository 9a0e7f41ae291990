"""What ``butterfly benchmark`` prints: an aligned table or JSON of the machine and its measurements."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.hardware.benchmark import LayerBenchmark, benchmark_layers, dtype_name, parse_dtype
from app.hardware.cache import BenchmarkRunner, cached_benchmark
from app.hardware.probe import MachineInfo, hardware_fingerprint, probe, usable_devices
from core.errors import ButterflyError
from core.model.config import ModelConfig

log = logging.getLogger(__name__)

REPORT_FORMAT = 1

_DEFAULT_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.bfloat16),
    "cuda": (torch.float16, torch.bfloat16),
    "mps": (torch.float16, torch.float32),
}
_COLUMNS = ("device", "dtype", "threads", "decode ms/layer", "prefill ms/layer", "est. layers/s",
            "matmul GFLOP/s", "memory GB/s")


@dataclass(frozen=True, slots=True)
class BenchmarkFailure:
    """A device/dtype pair that could not be benchmarked, and why."""

    device: str
    dtype: str
    reason: str


def format_table(info: MachineInfo, benches: Sequence[LayerBenchmark],
                 failures: Sequence[BenchmarkFailure] = ()) -> str:
    """Machine lines, then one aligned row per benchmark (times are medians per decoder layer).

    ``est. layers/s`` is decode steps through one layer per second; ``prefill ms/layer`` is
    for one chunk of the number of tokens shown in brackets.
    """
    lines = _machine_lines(info)
    rows = [_COLUMNS] + [_row(b) for b in benches]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    numeric = [False, False, True, True, True, True, True, True]
    lines.append("")
    for r in rows:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.extend(f"{f.device} {f.dtype}: failed: {f.reason}" for f in failures)
    return "\n".join(lines)


def to_json(info: MachineInfo, benches: Sequence[LayerBenchmark],
            failures: Sequence[BenchmarkFailure] = ()) -> dict[str, Any]:
    """A JSON-ready dict of the machine, its fingerprint and each benchmark; :func:`from_json` reads it back."""
    return {
        "format": REPORT_FORMAT,
        "machine": info.to_dict(),
        "fingerprint": hardware_fingerprint(info),
        "benchmarks": [b.to_dict() for b in benches],
        "failures": [{"device": f.device, "dtype": f.dtype, "reason": f.reason} for f in failures],
    }


def from_json(data: Mapping[str, Any]) -> tuple[MachineInfo, tuple[LayerBenchmark, ...]]:
    """The machine and benchmarks of a :func:`to_json` dict; ``ValueError`` if it is not one."""
    if not isinstance(data, Mapping) or data.get("format") != REPORT_FORMAT:
        raise ValueError("not a Butterfly benchmark report")
    benches = data.get("benchmarks")
    if not isinstance(benches, list):
        raise ValueError("benchmark report lacks its benchmarks list")
    return MachineInfo.from_dict(data["machine"]), tuple(LayerBenchmark.from_dict(b) for b in benches)


def run_benchmark_command(
    model_config: ModelConfig,
    *,
    dtypes: Sequence[str | torch.dtype] | None = None,
    as_json: bool = False,
    force: bool = False,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    cache_path: Path | None = None,
    info: MachineInfo | None = None,
    model_name: str = "",
    runner: BenchmarkRunner = benchmark_layers,
) -> str:
    """Benchmark ``model_config``'s layer on each usable device and return the text to print.

    ``devices`` defaults to every usable device (CPU always, then CUDA devices or MPS);
    ``dtypes`` (names such as ``"bf16"`` or torch dtypes) default per device: float32 and
    bfloat16 on CPU, float16 and bfloat16 on CUDA, float16 and float32 on MPS. float16 on
    a CPU is skipped (too slow to serve). Cached results are reused unless ``force``.
    A device that fails is reported as such; :class:`~core.errors.ConfigError` for an
    unknown dtype name. ``info`` (default: :func:`probe`) and ``runner`` (default:
    :func:`benchmark_layers`) may be given, e.g. to reuse a probe.
    """
    info = info if info is not None else probe()
    wanted = None if dtypes is None else tuple(parse_dtype(d) for d in dtypes)
    benches: list[LayerBenchmark] = []
    failures: list[BenchmarkFailure] = []
    for device in devices if devices is not None else usable_devices(info):
        kind = torch.device(device).type
        for dtype in wanted if wanted is not None else _DEFAULT_DTYPES.get(kind, (torch.float32,)):
            if kind == "cpu" and dtype == torch.float16:
                failures.append(BenchmarkFailure(device, dtype_name(dtype), "skipped: float16 is too slow on CPUs"))
                continue
            try:
                benches.append(cached_benchmark(model_config, dtype=dtype, device=device, threads=threads,
                                                cache_path=cache_path, force=force, info=info, runner=runner))
            except (ButterflyError, RuntimeError, ValueError) as exc:
                log.warning("benchmark of %s %s failed: %r", device, dtype, exc)
                failures.append(BenchmarkFailure(device, dtype_name(dtype), str(exc) or type(exc).__name__))
    if as_json:
        report = to_json(info, benches, failures)
        report["model"] = {"name": model_name, "num_layers": model_config.num_layers,
                           "architecture": model_config.architecture}
        return json.dumps(report, indent=2)
    text = format_table(info, benches, failures)
    title = f"model: {model_name or model_config.architecture}, {model_config.num_layers} layers"
    totals = [
        f"  {b.device} {b.dtype}: ~{b.decode_layers_per_second / model_config.num_layers:.1f} tokens/s "
        f"for the whole model alone (decode)"
        for b in benches
    ]
    return "\n".join([title, text, *(["", "this machine serving every layer:", *totals] if totals else [])])


def _machine_lines(info: MachineInfo) -> list[str]:
    gib = 1 << 30
    lines = [
        f"os:       {info.os_label} ({info.arch})",
        f"cpu:      {info.cpu_model}, {info.physical_cores} cores / {info.logical_cores} threads",
        f"memory:   {info.total_memory_bytes / gib:.1f} GiB total, {info.available_memory_bytes / gib:.1f} GiB available",
    ]
    for d in info.cuda_devices:
        lines.append(f"cuda:{d.index}:   {d.name}, {d.total_memory_bytes / gib:.1f} GiB, "
                     f"compute capability {d.compute_capability[0]}.{d.compute_capability[1]}")
    if info.mps_available:
        lines.append("mps:      Apple Metal (unified memory)")
    lines.append(f"torch:    {info.torch_version or 'unknown'}   accelerator: {info.accelerator}")
    lines.append(f"hardware: {hardware_fingerprint(info)[:16]}")
    return lines


def _row(b: LayerBenchmark) -> tuple[str, ...]:
    return (
        b.device,
        b.dtype,
        str(b.threads),
        f"{b.seconds_per_layer_decode * 1e3:.3f}",
        f"{b.seconds_per_layer_prefill * 1e3:.2f} ({b.prefill_tokens})",
        f"{b.decode_layers_per_second:.0f}",
        f"{b.matmul_gflops:.1f}",
        f"{b.memory_gbs:.1f}",
    )
