"""What ``butterfly benchmark`` prints: an aligned table, JSON that round-trips, every device covered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.hardware.benchmark import LayerBenchmark
from app.hardware.probe import hardware_fingerprint
from app.hardware.report import BenchmarkFailure, format_table, from_json, run_benchmark_command, to_json
from core.errors import ConfigError
from tests.app.hardware.samples import CountingRunner, fake_bench, gpu_machine, machine, tiny_config

COLUMNS = ("device", "dtype", "threads", "decode ms/layer", "prefill ms/layer", "est. layers/s", "matmul GFLOP/s",
           "memory GB/s")


def _benches() -> list[LayerBenchmark]:
    return [fake_bench(tiny_config()), fake_bench(tiny_config(), dtype=torch.bfloat16, device="cuda:0")]


def test_table_has_machine_lines_and_aligned_columns() -> None:
    info = gpu_machine()
    text = format_table(info, _benches(), [BenchmarkFailure("cpu", "float16", "skipped")])
    assert "Test CPU 9000" in text and "Test GPU 80GB" in text and "16.0 GiB total" in text
    assert hardware_fingerprint(info)[:16] in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("device"))
    for column in COLUMNS:
        assert column in lines[header]
    rows = lines[header + 1:header + 3]
    assert rows[0].split()[:3] == ["cpu", "float32", "2"]
    assert rows[1].split()[:2] == ["cuda:0", "bfloat16"]
    assert "2.000" in rows[0] and "20.00 (128)" in rows[0] and "500" in rows[0] and "123.4" in rows[0]
    assert len({len(line) for line in lines[header:header + 3]}) == 1  # right-aligned numbers end together
    assert lines[-1] == "cpu float16: failed: skipped"


def test_json_round_trips() -> None:
    info, benches = gpu_machine(), _benches()
    data = json.loads(json.dumps(to_json(info, benches)))
    assert data["fingerprint"] == hardware_fingerprint(info)
    assert from_json(data) == (info, tuple(benches))


def test_from_json_refuses_other_documents() -> None:
    with pytest.raises(ValueError):
        from_json({"benchmarks": []})
    with pytest.raises(ValueError):
        from_json({**to_json(machine(), _benches()), "benchmarks": None})


def test_command_benchmarks_cpu_in_float32_and_bfloat16_by_default(runner: CountingRunner, tmp_path: Path) -> None:
    text = run_benchmark_command(tiny_config(num_hidden_layers=30), as_json=False, force=False,
                                 cache_path=tmp_path / "b.json", info=machine(), runner=runner, model_name="tiny")
    assert [(c["device"], c["dtype"]) for c in runner.calls] == [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    assert text.startswith("model: tiny, 30 layers") and "decode ms/layer" in text
    assert "cpu float32: ~16.7 tokens/s" in text  # 1 / (0.002 s x 30 layers)
    run_benchmark_command(tiny_config(num_hidden_layers=30), cache_path=tmp_path / "b.json", info=machine(),
                          runner=runner)
    assert len(runner.calls) == 2  # cached
    run_benchmark_command(tiny_config(num_hidden_layers=30), force=True, cache_path=tmp_path / "b.json",
                          info=machine(), runner=runner)
    assert len(runner.calls) == 4


def test_command_covers_each_accelerator(runner: CountingRunner, tmp_path: Path) -> None:
    text = run_benchmark_command(tiny_config(), dtypes=["bf16", "fp16"], as_json=True, cache_path=tmp_path / "b.json",
                                 info=gpu_machine(), runner=runner)
    assert [(c["device"], c["dtype"]) for c in runner.calls] == [
        ("cpu", torch.bfloat16), ("cuda:0", torch.bfloat16), ("cuda:0", torch.float16)]
    data = json.loads(text)
    assert [b["device"] for b in data["benchmarks"]] == ["cpu", "cuda:0", "cuda:0"]
    assert data["failures"] == [{"device": "cpu", "dtype": "float16", "reason": "skipped: float16 is too slow on CPUs"}]
    assert data["model"]["num_layers"] == 4
    assert from_json(data)[0] == gpu_machine()


def test_a_failing_device_is_reported_not_raised(tmp_path: Path) -> None:
    def broken(config, *, dtype, device, threads, now):  # noqa: ANN001, ANN202
        if device.startswith("cuda"):
            raise RuntimeError("CUDA error: no kernel image is available")
        return fake_bench(config, dtype=dtype, device=device)

    text = run_benchmark_command(tiny_config(), dtypes=["float32"], cache_path=tmp_path / "b.json",
                                 info=gpu_machine(), runner=broken)
    assert "cuda:0 float32: failed: CUDA error: no kernel image is available" in text
    assert "cpu float32" in text


def test_unknown_dtype_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run_benchmark_command(tiny_config(), dtypes=["int4"], cache_path=tmp_path / "b.json", info=machine())


def test_command_runs_the_real_benchmark(tmp_path: Path) -> None:
    text = run_benchmark_command(tiny_config(), dtypes=["float32"], devices=["cpu"], as_json=True,
                                 cache_path=tmp_path / "b.json")
    (bench,) = from_json(json.loads(text))[1]
    assert bench.seconds_per_layer_decode > 0 and bench.dtype == "float32"
