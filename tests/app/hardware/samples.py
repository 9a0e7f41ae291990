"""Sample values for the hardware tests: a tiny model config, hand-made machines, a fake benchmark."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from app.hardware.benchmark import LayerBenchmark, dtype_name, layer_signature, runtime_version
from app.hardware.probe import CudaDevice, MachineInfo
from core.model.config import ModelConfig

GIB = 1 << 30


def tiny_config(**overrides: Any) -> ModelConfig:
    """A small Llama config (GQA 4/2 heads) that benchmarks in a fraction of a second."""
    hf: dict[str, Any] = dict(
        model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
    )
    hf.update(overrides)
    return ModelConfig.from_hf(hf)


def machine(**overrides: Any) -> MachineInfo:
    """A plausible 8-core Linux machine with 16 GiB of RAM and no accelerator."""
    base = MachineInfo(
        os_name="Linux", os_version="6.1.0 (Debian GNU/Linux 12)", arch="x86_64", cpu_model="Test CPU 9000",
        physical_cores=4, logical_cores=8, total_memory_bytes=16 * GIB, available_memory_bytes=12 * GIB,
        cuda_devices=(), mps_available=False, torch_version="2.13.0",
    )
    return dataclasses.replace(base, **overrides)


def gpu_machine() -> MachineInfo:
    return machine(cuda_devices=(CudaDevice(0, "Test GPU 80GB", 80 * GIB, (9, 0)),))


def fake_bench(config: ModelConfig, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               threads: int = 2, now: float = 1000.0) -> LayerBenchmark:
    return LayerBenchmark(
        architecture=config.architecture, layer_signature=layer_signature(config), dtype=dtype_name(dtype),
        device=device, threads=threads, seconds_per_layer_decode=0.002, seconds_per_layer_prefill=0.02,
        prefill_tokens=128, context_tokens=256, decode_repeats=10, prefill_repeats=5, matmul_gflops=123.4,
        memory_gbs=20.5, runtime_version=runtime_version(), measured_unix_s=now, benchmark_seconds=1.5,
    )


class CountingRunner:
    """A benchmark runner that records its calls and returns :func:`fake_bench` figures."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, config: ModelConfig, *, dtype: torch.dtype, device: str, threads: int | None,
                 now: float | None) -> LayerBenchmark:
        self.calls.append(dict(config=config, dtype=dtype, device=device, threads=threads, now=now))
        return fake_bench(config, dtype=dtype, device=device, threads=threads or 2,
                          now=1000.0 + len(self.calls) if now is None else now)

