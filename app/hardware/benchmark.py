"""Measured speed of one decoder layer of the pool's model on this machine, plus two micro-benchmarks.

:func:`benchmark_layers` builds one real decoder layer of the model's shapes (random weights,
a middle-stage :class:`~core.model.shard.Shard`) and times what a stage does: a decode step
against a KV cache already holding ``context_tokens`` tokens, and a prompt's first prefill
chunk of ``prefill_tokens`` tokens. Each runs after a warm-up; the figure is the median of
its repeats, and the number of repeats adapts so the whole run stays near ``budget_s``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from app.hardware import RUNTIME_VERSION
from core.errors import ConfigError
from core.model.config import ModelConfig
from core.model.shard import Shard
from core.model.weights import expected_shape, layer_tensor_names
from core.types import LayerRange

MIN_REPEATS = 3
"""Fewest timed runs behind any median, whatever the budget."""

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16, "half": torch.float16,
}
# Share of the budget spent on each timed part, after the warm-up.
_DECODE_SHARE, _PREFILL_SHARE, _MATMUL_SHARE, _MEMORY_SHARE = 0.3, 0.45, 0.1, 0.1


@dataclass(frozen=True, slots=True)
class LayerBenchmark:
    """One layer-benchmark result. Times are medians, in seconds per layer.

    ``seconds_per_layer_prefill`` is for one chunk of ``prefill_tokens`` tokens;
    ``seconds_per_layer_decode`` for one token attending to ``context_tokens`` cached ones.
    ``layer_signature`` names the layer shape measured (see :func:`layer_signature`).
    """

    architecture: str
    layer_signature: str
    dtype: str
    device: str
    threads: int
    seconds_per_layer_decode: float
    seconds_per_layer_prefill: float
    prefill_tokens: int
    context_tokens: int
    decode_repeats: int
    prefill_repeats: int
    matmul_gflops: float
    memory_gbs: float
    runtime_version: str
    measured_unix_s: float
    benchmark_seconds: float

    @property
    def decode_layers_per_second(self) -> float:
        """Decode steps through one layer per second (``1 / seconds_per_layer_decode``)."""
        return 1.0 / self.seconds_per_layer_decode

    @property
    def prefill_seconds_per_token_layer(self) -> float:
        """Prefill time per token per layer."""
        return self.seconds_per_layer_prefill / self.prefill_tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back to an equal value."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerBenchmark:
        """The value :meth:`to_dict` wrote; ``ValueError`` unless every field is present and sane."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                raise ValueError(f"benchmark record lacks {f.name!r}")
            raw = data[f.name]
            kind = {"str": str, "int": int, "float": float}[str(f.type)]
            if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
                raw = float(raw)
            if not isinstance(raw, kind) or isinstance(raw, bool):
                raise ValueError(f"benchmark field {f.name!r} is not a {kind.__name__}: {raw!r}")
            values[f.name] = raw
        bench = cls(**values)
        times = (bench.seconds_per_layer_decode, bench.seconds_per_layer_prefill)
        if not all(math.isfinite(t) and t > 0 for t in times) or bench.prefill_tokens <= 0:
            raise ValueError("benchmark record has non-positive or non-finite times")
        return bench


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` for ``"float32"``/``"fp32"``, likewise bfloat16 and float16; :class:`ConfigError` otherwise."""
    if isinstance(name, torch.dtype):
        if name in _DTYPES.values():
            return name
        raise ConfigError(f"dtype {name} cannot be benchmarked", hint="use float32, bfloat16 or float16")
    dtype = _DTYPES.get(name.strip().lower().removeprefix("torch."))
    if dtype is None:
        raise ConfigError(f"unknown dtype {name!r}", hint="use float32, bfloat16 or float16")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32`` and so on."""
    return str(dtype).removeprefix("torch.")


def runtime_version() -> str:
    """The runtime identity a benchmark belongs to: :data:`RUNTIME_VERSION` and the torch version."""
    return f"{RUNTIME_VERSION} torch/{torch.__version__}"


def layer_signature(config: ModelConfig) -> str:
    """The architecture and every shape that sets one layer's cost (not depth, vocabulary or RoPE base)."""
    return (
        f"{config.architecture}:h{config.hidden_size}:i{config.intermediate_size}:q{config.num_heads}"
        f":kv{config.num_kv_heads}:d{config.head_dim}:bias{int(config.attention_bias)}"
        f":obias{int(config.o_proj_bias)}:win{config.sliding_window or 0}"
    )


def benchmark_layers(
    config: ModelConfig,
    *,
    dtype: torch.dtype,
    device: str = "cpu",
    threads: int | None = None,
    prefill_tokens: int = 128,
    context_tokens: int = 256,
    repeats: int = 25,
    budget_s: float = 2.0,
    seed: int = 0,
    now: float | None = None,
) -> LayerBenchmark:
    """Time one decoder layer of ``config``'s shapes in ``dtype`` on ``device``.

    ``threads`` sets torch's CPU threads for the run (restored afterwards; None keeps the
    current setting). ``repeats`` caps the timed runs of each part; fewer (at least
    :data:`MIN_REPEATS`) are taken when needed to stay near ``budget_s`` seconds.
    ``now`` stamps the result (default: the current time). Raises :class:`ConfigError` for
    bad arguments; errors of the device itself (a broken driver) propagate.
    """
    if prefill_tokens <= 0 or context_tokens < 0 or repeats < 1 or budget_s <= 0:
        raise ConfigError(
            f"bad benchmark settings: prefill_tokens={prefill_tokens}, context_tokens={context_tokens}, "
            f"repeats={repeats}, budget_s={budget_s}",
            hint="use positive token counts, repeats and budget",
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}", hint="pass a positive thread count")
    started = time.perf_counter()
    with _torch_threads(threads) as used_threads:
        shard = _random_middle_layer(config, dtype=dtype, device=device, seed=seed)
        decode_s, prefill_s, decode_n, prefill_n = _time_layer(
            shard, device=device, prefill_tokens=prefill_tokens, context_tokens=context_tokens,
            repeats=repeats, budget_s=budget_s, started=started, seed=seed,
        )
        del shard
        gflops = matmul_gflops(dtype, device, budget_s=budget_s * _MATMUL_SHARE)
        gbs = memory_bandwidth_gbs(device, budget_s=budget_s * _MEMORY_SHARE)
    return LayerBenchmark(
        architecture=config.architecture,
        layer_signature=layer_signature(config),
        dtype=dtype_name(dtype),
        device=str(device),
        threads=used_threads,
        seconds_per_layer_decode=decode_s,
        seconds_per_layer_prefill=prefill_s,
        prefill_tokens=prefill_tokens,
        context_tokens=context_tokens,
        decode_repeats=decode_n,
        prefill_repeats=prefill_n,
        matmul_gflops=gflops,
        memory_gbs=gbs,
        runtime_version=runtime_version(),
        measured_unix_s=time.time() if now is None else now,
        benchmark_seconds=time.perf_counter() - started,
    )


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", *, size: int | None = None,
                  budget_s: float = 0.2, max_repeats: int = 50) -> float:
    """Median GFLOP/s of a square matrix product in ``dtype`` on ``device``.

    With ``size`` None the matrices start at 256 x 256 and double while one product still
    fits comfortably in the budget, so a slow dtype (bfloat16 on a CPU without native support)
    stays within ``budget_s`` and a fast device is measured on a product large enough to load it.
    """
    largest = 2048 if torch.device(device).type == "cpu" else 8192
    n = size or 256
    gen = torch.Generator().manual_seed(0)

    def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype),
                torch.randn(n, n, generator=gen).to(device=device, dtype=dtype))

    a, b = operands(n)
    torch.mm(a, b)  # warm-up
    if size is None:
        while n < largest and _timed(lambda: torch.mm(a, b), device) * 8 < budget_s / (MIN_REPEATS + 2):
            n *= 2
            a, b = operands(n)
    seconds = _median_time(lambda: torch.mm(a, b), device, budget_s=budget_s, max_repeats=max_repeats)
    return 2.0 * n**3 / seconds / 1e9


def memory_bandwidth_gbs(device: str = "cpu", *, nbytes: int = 64 << 20, budget_s: float = 0.2,
                         max_repeats: int = 30) -> float:
    """Median GB/s (10^9 bytes read plus written per second) of copying an ``nbytes`` tensor on ``device``."""
    elements = max(1, nbytes // 4)
    src = torch.ones(elements, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _median_time(lambda: dst.copy_(src), device, budget_s=budget_s, max_repeats=max_repeats)
    return 2.0 * elements * 4 / seconds / 1e9


# ---------------------------------------------------------------------------- internals


def _random_middle_layer(config: ModelConfig, *, dtype: torch.dtype, device: str, seed: int) -> Shard:
    """A one-layer middle stage of ``config``'s shapes with random weights (init-like scale)."""
    # Three layers make layer 1 a middle stage (no embedding, no head) whatever the real depth.
    cfg = dataclasses.replace(config, num_layers=3)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in layer_tensor_names(cfg, 1):
        shape = expected_shape(cfg, name)
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=dtype)
        else:
            tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
    return Shard(cfg, LayerRange(1, 2, 3), tensors, dtype=dtype, device=device)


def _time_layer(shard: Shard, *, device: str, prefill_tokens: int, context_tokens: int, repeats: int,
                budget_s: float, started: float, seed: int) -> tuple[float, float, int, int]:
    """Median decode and prefill seconds and their repeat counts, within about ``budget_s``."""
    cfg = shard.config
    gen = torch.Generator().manual_seed(seed + 1)
    token = torch.randn(1, cfg.hidden_size, generator=gen).to(device=device, dtype=shard.dtype)
    chunk = torch.randn(prefill_tokens, cfg.hidden_size, generator=gen).to(device=device, dtype=shard.dtype)
    cache = shard.new_cache()
    cache.reserve(max(context_tokens + 1, prefill_tokens))
    for i in range(len(shard.layers)):
        for part in cache.layer(i):  # random keys/values cost attention what real ones do
            part[:, :context_tokens].copy_(torch.randn(part[:, :context_tokens].shape, generator=gen))

    def decode() -> None:
        cache.length = context_tokens
        shard(token, cache)

    def prefill() -> None:
        cache.length = 0
        shard(chunk, cache)

    decode()  # warm-up: RoPE tables, allocator, kernels
    prefill_est = _timed(prefill, device)  # also warms prefill up; a slight overestimate is harmless
    decode_est = _timed(decode, device)
    left = max(0.0, budget_s - (time.perf_counter() - started))
    decode_n = _repeats_within(left * _DECODE_SHARE, decode_est, repeats)
    prefill_n = _repeats_within(left * _PREFILL_SHARE, prefill_est, repeats)
    decode_s = statistics.median(_timed(decode, device) for _ in range(decode_n))
    prefill_s = statistics.median(_timed(prefill, device) for _ in range(prefill_n))
    return decode_s, prefill_s, decode_n, prefill_n


def _repeats_within(budget_s: float, estimate_s: float, cap: int) -> int:
    fits = int(budget_s / estimate_s) if estimate_s > 0 else cap
    return max(MIN_REPEATS, min(cap, fits))


def _median_time(run: Callable[[], object], device: str, *, budget_s: float, max_repeats: int) -> float:
    """Median seconds of ``run`` after one warm-up, repeated while within ``budget_s`` (at least 3 times)."""
    run()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_repeats and (len(times) < MIN_REPEATS or time.perf_counter() < deadline):
        times.append(_timed(run, device))
    return max(statistics.median(times), 1e-9)


def _timed(run: Callable[[], object], device: str) -> float:
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: str) -> None:
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` torch CPU threads (None: as set), restoring the setting after; yields the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(before)
