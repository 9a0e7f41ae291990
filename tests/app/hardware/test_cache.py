"""The benchmark cache: a hit measures nothing, any change of key measures again, corruption is harmless."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from app.hardware.benchmark import benchmark_layers
from app.hardware.cache import (
    MAX_ENTRIES,
    cached_benchmark,
    default_cache_path,
    load_entries,
    save_entries,
)
from tests.app.hardware.samples import CountingRunner, gpu_machine, machine, tiny_config


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "benchmarks.json"


def _run(runner: CountingRunner, path: Path, **overrides: object):  # noqa: ANN202 - LayerBenchmark
    kwargs: dict[str, object] = dict(dtype=torch.float32, device="cpu", threads=2, cache_path=path,
                                     info=machine(), runner=runner)
    kwargs.update(overrides)
    config = kwargs.pop("config", tiny_config())
    return cached_benchmark(config, **kwargs)  # type: ignore[arg-type]


def test_second_call_is_a_hit(runner: CountingRunner, path: Path) -> None:
    first = _run(runner, path, now=5.0)
    assert len(runner.calls) == 1 and runner.calls[0]["now"] == 5.0 and path.is_file()
    second = _run(runner, path, now=6.0)
    assert len(runner.calls) == 1
    assert second == first


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": torch.bfloat16},
        {"device": "cuda:0", "info": gpu_machine()},
        {"threads": 1},
        {"config": tiny_config(model_type="qwen2")},
        {"config": tiny_config(hidden_size=128)},
        {"info": machine(cpu_model="Another CPU")},
        {"runtime": "butterfly-runtime/999 torch/0.0"},
    ],
)
def test_any_change_of_key_measures_again(runner: CountingRunner, path: Path, change: dict[str, object]) -> None:
    _run(runner, path)
    _run(runner, path, **change)
    assert len(runner.calls) == 2
    _run(runner, path, **change)  # the new result was stored beside the old one
    _run(runner, path)
    assert len(runner.calls) == 2


def test_what_does_not_change_the_layer_is_still_a_hit(runner: CountingRunner, path: Path) -> None:
    _run(runner, path)
    _run(runner, path, config=tiny_config(num_hidden_layers=30, vocab_size=1000))
    _run(runner, path, info=machine(available_memory_bytes=1, os_version="7.0"))
    assert len(runner.calls) == 1


def test_force_measures_again_and_replaces_the_entry(runner: CountingRunner, path: Path) -> None:
    _run(runner, path, now=1.0)
    forced = _run(runner, path, force=True, now=2.0)
    assert len(runner.calls) == 2 and forced.measured_unix_s == 2.0
    assert _run(runner, path).measured_unix_s == 2.0 and len(runner.calls) == 2
    assert len(load_entries(path)) == 1


def test_default_threads_are_torchs_current_setting(runner: CountingRunner, path: Path) -> None:
    _run(runner, path, threads=None)
    _run(runner, path, threads=torch.get_num_threads())
    assert len(runner.calls) == 1 and runner.calls[0]["threads"] is None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2, 3]",
        json.dumps({"format": 999, "entries": {}}),
        json.dumps({"format": 1, "entries": []}),
        "\x00\xff garbage",
    ],
)
def test_a_corrupt_file_is_logged_and_replaced(
    runner: CountingRunner, path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="app.hardware.cache"):
        _run(runner, path)
    assert len(runner.calls) == 1 and "benchmark cache" in caplog.text
    _run(runner, path)
    assert len(runner.calls) == 1


def test_a_malformed_entry_is_ignored(runner: CountingRunner, path: Path) -> None:
    _run(runner, path)
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry["result"]["seconds_per_layer_decode"] = "fast"
    path.write_text(json.dumps(data))
    _run(runner, path)
    assert len(runner.calls) == 2
    _run(runner, path)
    assert len(runner.calls) == 2


def test_an_unwritable_cache_still_returns_the_result(
    runner: CountingRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="app.hardware.cache"):
        bench = _run(runner, blocker / "benchmarks.json")
    assert bench.seconds_per_layer_decode > 0 and "could not write" in caplog.text


def test_the_file_keeps_only_the_newest_entries(path: Path) -> None:
    entries = {f"k{i}": {"result": {"measured_unix_s": float(i)}} for i in range(MAX_ENTRIES + 10)}
    save_entries(path, entries)
    kept = load_entries(path)
    assert len(kept) == MAX_ENTRIES and "k0" not in kept and f"k{MAX_ENTRIES + 9}" in kept
    assert not list(path.parent.glob(".benchmarks-*"))  # no temporary file left behind


def test_default_path_is_in_the_users_cache_folder() -> None:
    path = default_cache_path()
    assert path.name == "benchmarks.json" and "butterfly" in str(path.parent).lower()


def test_a_real_benchmark_is_cached(path: Path) -> None:
    calls = []

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(kwargs)
        return benchmark_layers(*args, **kwargs, prefill_tokens=16, context_tokens=16, budget_s=0.1, repeats=3)

    first = cached_benchmark(tiny_config(), dtype=torch.float32, cache_path=path, runner=counting)
    second = cached_benchmark(tiny_config(), dtype=torch.float32, cache_path=path, runner=counting)
    assert len(calls) == 1 and second == first and first.seconds_per_layer_decode > 0
    assert dataclasses.asdict(second) == json.loads(path.read_text())["entries"].popitem()[1]["result"]
