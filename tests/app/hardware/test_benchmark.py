"""The layer benchmark: a real decoder layer of the model's shapes, timed with sane results."""

from __future__ import annotations

import math
import time

import pytest
import torch

from app.hardware import RUNTIME_VERSION
from app.hardware.benchmark import (
    MIN_REPEATS,
    LayerBenchmark,
    _random_middle_layer,
    benchmark_layers,
    dtype_name,
    layer_signature,
    matmul_gflops,
    memory_bandwidth_gbs,
    parse_dtype,
    runtime_version,
)
from core.errors import ConfigError
from tests.app.hardware.samples import fake_bench, tiny_config


def _check_sane(bench: LayerBenchmark) -> None:
    for value in (bench.seconds_per_layer_decode, bench.seconds_per_layer_prefill, bench.matmul_gflops,
                  bench.memory_gbs):
        assert math.isfinite(value) and value > 0
    assert bench.decode_repeats >= MIN_REPEATS and bench.prefill_repeats >= MIN_REPEATS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_benchmark_of_a_tiny_layer_is_sane(dtype: torch.dtype) -> None:
    config = tiny_config()
    started = time.perf_counter()
    bench = benchmark_layers(config, dtype=dtype, prefill_tokens=64, context_tokens=128, budget_s=0.5, now=42.0)
    assert time.perf_counter() - started < 10
    _check_sane(bench)
    assert bench.prefill_seconds_per_token_layer < bench.seconds_per_layer_decode  # batching pays
    assert (bench.architecture, bench.dtype, bench.device) == ("llama", dtype_name(dtype), "cpu")
    assert (bench.prefill_tokens, bench.context_tokens) == (64, 128)
    assert bench.layer_signature == layer_signature(config)
    assert bench.runtime_version == runtime_version() and RUNTIME_VERSION in bench.runtime_version
    assert bench.measured_unix_s == 42.0 and bench.benchmark_seconds > 0
    assert bench.threads == torch.get_num_threads()


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_type": "qwen2"},  # q/k/v biases
        {"attention_bias": True},  # Llama with o_proj bias too
        {"model_type": "mistral", "sliding_window": 32},  # decode attends through a window
        {"num_hidden_layers": 1},  # a single-layer model still benchmarks as a middle stage
    ],
)
def test_benchmark_builds_every_supported_layer_shape(overrides: dict[str, object]) -> None:
    bench = benchmark_layers(tiny_config(**overrides), dtype=torch.float32, prefill_tokens=32, context_tokens=64,
                             budget_s=0.2, repeats=MIN_REPEATS)
    _check_sane(bench)
    assert bench.decode_repeats == bench.prefill_repeats == MIN_REPEATS


def test_the_timed_layer_has_the_models_shapes() -> None:
    config = tiny_config(hidden_size=96, intermediate_size=160, num_attention_heads=6, num_key_value_heads=3)
    shard = _random_middle_layer(config, dtype=torch.bfloat16, device="cpu", seed=0)
    assert not shard.layers.is_first and not shard.layers.is_last and len(shard.layers) == 1
    assert shard.embed is None and shard.lm_head is None
    block = shard.blocks[0]
    assert block.wqkv.shape == (config.q_size + 2 * config.kv_size, 96) and block.wqkv.dtype == torch.bfloat16
    assert block.w_gate_up.shape == (2 * 160, 96) and block.w_down.shape == (96, 160)


def test_threads_apply_during_the_run_and_are_restored() -> None:
    before = torch.get_num_threads()
    bench = benchmark_layers(tiny_config(), dtype=torch.float32, threads=1, prefill_tokens=16, context_tokens=16,
                             budget_s=0.1, repeats=MIN_REPEATS)
    assert bench.threads == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "kwargs",
    [{"prefill_tokens": 0}, {"context_tokens": -1}, {"repeats": 0}, {"budget_s": 0.0}, {"threads": 0}],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        benchmark_layers(tiny_config(), dtype=torch.float32, **kwargs)  # type: ignore[arg-type]


def test_micro_benchmarks_are_positive_and_bounded() -> None:
    started = time.perf_counter()
    for dtype in (torch.float32, torch.bfloat16):
        gflops = matmul_gflops(dtype, budget_s=0.05)
        assert math.isfinite(gflops) and gflops > 0
    assert matmul_gflops(torch.float32, size=64, budget_s=0.01) > 0
    gbs = memory_bandwidth_gbs(nbytes=8 << 20, budget_s=0.05)
    assert math.isfinite(gbs) and gbs > 0
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float32", torch.float32), ("FP32", torch.float32), ("bf16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16),
     ("half", torch.float16), (torch.float32, torch.float32)],
)
def test_parse_dtype(name: str | torch.dtype, dtype: torch.dtype) -> None:
    assert parse_dtype(name) == dtype


@pytest.mark.parametrize("name", ["int8", "float64", "", torch.int64])
def test_parse_dtype_refuses_what_cannot_be_benchmarked(name: str | torch.dtype) -> None:
    with pytest.raises(ConfigError):
        parse_dtype(name)


def test_layer_signature_names_the_layer_shape_only() -> None:
    base = layer_signature(tiny_config())
    assert base == layer_signature(tiny_config(num_hidden_layers=30, vocab_size=999, rope_theta=5e5))
    assert base != layer_signature(tiny_config(hidden_size=128))
    assert base != layer_signature(tiny_config(model_type="qwen2"))
    assert base != layer_signature(tiny_config(num_key_value_heads=4))


def test_layer_benchmark_round_trips_and_rejects_bad_records() -> None:
    bench = fake_bench(tiny_config())
    assert LayerBenchmark.from_dict(bench.to_dict()) == bench
    assert LayerBenchmark.from_dict({**bench.to_dict(), "matmul_gflops": 5}).matmul_gflops == 5.0
    for bad in (
        {k: v for k, v in bench.to_dict().items() if k != "dtype"},
        {**bench.to_dict(), "threads": "2"},
        {**bench.to_dict(), "threads": True},
        {**bench.to_dict(), "seconds_per_layer_decode": float("nan")},
        {**bench.to_dict(), "seconds_per_layer_prefill": -1.0},
        {**bench.to_dict(), "prefill_tokens": 0},
    ):
        with pytest.raises(ValueError):
            LayerBenchmark.from_dict(bad)
