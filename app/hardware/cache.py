"""Benchmark results kept between runs, so the app measures a model on a machine once.

Results live in one JSON file (``benchmarks.json`` in the user's cache folder), keyed by
everything that changes the figures: the hardware fingerprint, the layer shape, dtype,
device, thread count and runtime version. Any change of those is a miss and a new
measurement. A file that cannot be read or parsed is logged and treated as empty; one that
cannot be written is logged and the fresh result is still returned.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs
import torch

from app.hardware.benchmark import LayerBenchmark, benchmark_layers, dtype_name, layer_signature, runtime_version
from app.hardware.probe import MachineInfo, hardware_fingerprint, probe
from core.model.config import ModelConfig

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "benchmarks.json"
FILE_FORMAT = 1
MAX_ENTRIES = 64
"""Most results kept; the oldest measurements go first."""

BenchmarkRunner = Callable[..., LayerBenchmark]
"""Called as ``runner(config, dtype=, device=, threads=, now=)``; :func:`benchmark_layers` by default."""


@dataclass(frozen=True, slots=True)
class BenchmarkKey:
    """Everything a cached result must match to be reused."""

    fingerprint: str
    layer_signature: str
    dtype: str
    device: str
    threads: int
    runtime_version: str

    def as_string(self) -> str:
        """The key's JSON-object key in the cache file."""
        return "|".join((self.fingerprint, self.layer_signature, self.dtype, self.device,
                         str(self.threads), self.runtime_version))


def default_cache_path() -> Path:
    """``benchmarks.json`` in the per-user cache folder of Butterfly (platformdirs)."""
    return platformdirs.user_cache_path("butterfly") / CACHE_FILE_NAME


def benchmark_key(config: ModelConfig, *, dtype: torch.dtype, device: str, threads: int, fingerprint: str,
                  runtime: str | None = None) -> BenchmarkKey:
    """The key of a benchmark of ``config`` with these settings on the machine ``fingerprint``."""
    return BenchmarkKey(
        fingerprint=fingerprint,
        layer_signature=layer_signature(config),
        dtype=dtype_name(dtype),
        device=str(device),
        threads=threads,
        runtime_version=runtime_version() if runtime is None else runtime,
    )


def cached_benchmark(
    config: ModelConfig,
    *,
    dtype: torch.dtype,
    device: str = "cpu",
    threads: int | None = None,
    cache_path: Path | None = None,
    force: bool = False,
    now: float | None = None,
    info: MachineInfo | None = None,
    runtime: str | None = None,
    runner: BenchmarkRunner = benchmark_layers,
) -> LayerBenchmark:
    """The benchmark of ``config`` in ``dtype`` on ``device`` from the cache, else measured and stored.

    ``force`` measures again even on a hit. ``info`` (default: :func:`probe`) gives the hardware
    fingerprint, ``runtime`` the runtime version (default: :func:`runtime_version`); ``now``
    stamps a new measurement. Cache read/write problems are logged, never raised.
    """
    used_threads = threads if threads is not None else torch.get_num_threads()
    fingerprint = hardware_fingerprint(info if info is not None else probe())
    key = benchmark_key(config, dtype=dtype, device=device, threads=used_threads, fingerprint=fingerprint,
                        runtime=runtime)
    path = cache_path if cache_path is not None else default_cache_path()
    entries = load_entries(path)
    if not force:
        hit = _entry_result(entries.get(key.as_string()))
        if hit is not None:
            return hit
    bench = runner(config, dtype=dtype, device=device, threads=threads, now=now)
    entries[key.as_string()] = {"key": asdict(key), "result": bench.to_dict()}
    save_entries(path, entries)
    return bench


def load_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The cache file's entries by key string; empty (and logged) if it is missing, unreadable or corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("benchmark cache %s is unreadable (%s); measuring again", path, exc)
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.warning("benchmark cache %s is corrupt (%s); measuring again", path, exc)
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FILE_FORMAT else None
    if not isinstance(entries, dict):
        log.warning("benchmark cache %s has an unknown layout; measuring again", path)
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}


def save_entries(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``entries`` (the newest :data:`MAX_ENTRIES`) atomically to ``path``; log, never raise, on failure."""
    kept = sorted(entries.items(), key=lambda item: _measured_at(item[1]), reverse=True)[:MAX_ENTRIES]
    payload = json.dumps({"format": FILE_FORMAT, "entries": dict(kept)}, indent=1, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".benchmarks-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("could not write benchmark cache %s (%s); the result is not kept", path, exc)


def _entry_result(entry: Mapping[str, Any] | None) -> LayerBenchmark | None:
    if entry is None:
        return None
    try:
        return LayerBenchmark.from_dict(entry["result"])
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring a malformed benchmark cache entry (%s)", exc)
        return None


def _measured_at(entry: Mapping[str, Any]) -> float:
    result = entry.get("result")
    value = result.get("measured_unix_s") if isinstance(result, dict) else None
    return float(value) if isinstance(value, (int, float)) else 0.0
