"""The local single-process pipeline: load shards from safetensors and chain them greedily.

Tests use it as the known-good pipeline, and the coordinator to spot-check volunteers' results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from core.errors import ShardLoadFailed
from core.model.config import ModelConfig
from core.model.shard import Shard
from core.model.weights import shard_tensor_names
from core.types import LayerRange


def greedy_generate(shards: Sequence[Shard], prompt_ids: Sequence[int], max_new_tokens: int, *,
                    eos_token_ids: Sequence[int] = ()) -> list[int]:
    """Greedy-decode up to ``max_new_tokens`` new tokens through ``shards`` chained in order.

    The shards must cover the model's layers contiguously from the first to the last; each
    gets its own fresh cache. Returns only the new tokens, stopping after (and including)
    the first one in ``eos_token_ids``.
    """
    _check_chain(shards)
    if not prompt_ids:
        raise ValueError("greedy_generate needs a non-empty prompt")
    caches = [shard.new_cache() for shard in shards]
    stop = set(eos_token_ids)
    device = shards[0].device
    x = torch.tensor(list(prompt_ids), dtype=torch.int64, device=device)
    out: list[int] = []
    while len(out) < max_new_tokens:
        h: torch.Tensor = x
        for shard, cache in zip(shards, caches, strict=True):
            h = shard(h, cache)
        token = int(h[-1].argmax())
        out.append(token)
        if token in stop:
            break
        x = torch.tensor([token], dtype=torch.int64, device=device)
    return out


def load_shard_from_safetensors(path_or_dir: str | Path, config: ModelConfig, layers: LayerRange, *,
                                dtype: torch.dtype, device: str | torch.device = "cpu") -> Shard:
    """Build the :class:`Shard` for ``layers``, reading only its tensors from safetensors file(s).

    ``path_or_dir`` is one ``.safetensors`` file or a directory holding ``model.safetensors``,
    a sharded checkpoint with ``model.safetensors.index.json``, or ``*.safetensors`` files.
    """
    wanted = shard_tensor_names(config, layers)
    files = _locate(Path(path_or_dir), wanted)
    found: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            present = set(reader.keys())
            for name in wanted:
                if name in present and name not in found:
                    found[name] = reader.get_tensor(name)
    return Shard(config, layers, found, dtype=dtype, device=device)


def _locate(path: Path, wanted: Sequence[str]) -> list[Path]:
    """The safetensors files to open; with an index, only those holding a wanted tensor."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ShardLoadFailed(f"no safetensors file or directory at {path}", hint="check the model path")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return [path / name for name in sorted({weight_map[n] for n in wanted if n in weight_map})]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ShardLoadFailed(f"no .safetensors files in {path}", hint="convert the model to safetensors first")
    return files


def _check_chain(shards: Sequence[Shard]) -> None:
    if not shards:
        raise ValueError("greedy_generate needs at least one shard")
    if not shards[0].layers.is_first or not shards[-1].layers.is_last:
        raise ValueError("the shards must start at layer 0 and end at the last layer")
    for a, b in zip(shards, shards[1:]):
        if a.layers.end != b.layers.start:
            raise ValueError(f"shards {a.layers} and {b.layers} are not contiguous")
