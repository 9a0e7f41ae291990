"""Turning a GGUF file into a model in Hugging Face form.

Tensors are renamed from llama.cpp's names to Hugging Face's, quantized ones are
dequantized to float32 (F32/F16/BF16 keep their dtype), and llama.cpp's interleaving of
the query/key rows for rotary embeddings is undone. ``config.json`` is rebuilt from the
``<arch>.*`` metadata and ``tokenizer.json`` from ``tokenizer.*`` metadata. Each tensor is
read and converted only when the store asks for its bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize

from core.errors import ModelFormatError
from core.store.gguf_tokenizer import build_tokenizer, build_tokenizer_config, special_token_id
from core.store.safetensors_file import TensorSpec
from core.store.source import ModelSource, TensorSource

GGUF_MAGIC = b"GGUF"

SUPPORTED_GGUF_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2")
"""Values of ``general.architecture`` this importer converts."""

_HF_ARCHITECTURE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ROPE_PERMUTED = frozenset({"llama"})
"""Architectures whose q/k rows llama.cpp's converter permutes."""

_KEPT_FLOAT = {
    GGMLQuantizationType.F32: ("float32", np.float32),
    GGMLQuantizationType.F16: ("float16", np.float16),
    GGMLQuantizationType.BF16: ("bfloat16", np.uint16),
}
_UNQUANTIZED_OTHER = frozenset(
    {
        GGMLQuantizationType.F64,
        GGMLQuantizationType.I8,
        GGMLQuantizationType.I16,
        GGMLQuantizationType.I32,
        GGMLQuantizationType.I64,
    }
)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)")
_ROPE_FREQS = "rope_freqs.weight"


def open_gguf(path: Path) -> ModelSource:
    """Read a GGUF file's metadata and plan its conversion; tensors are converted lazily.

    Raises :class:`ModelFormatError` for a file that is not GGUF, is truncated or corrupt,
    or uses an architecture, tensor, quantization or tokenizer this importer does not support.
    """
    reader = _open_reader(path)
    metadata = read_metadata(reader)
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ModelFormatError(
            f"GGUF architecture {arch!r} is not supported",
            hint=f"supported GGUF architectures: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}",
        )
    by_name = {t.name: t for t in reader.tensors}
    rope_tensor = by_name.pop(_ROPE_FREQS, None)
    rope_factors = None if rope_tensor is None else np.asarray(dequantize(rope_tensor.data, rope_tensor.tensor_type))
    config = hf_config_from_gguf(metadata, frozenset(by_name), rope_factors=rope_factors)
    _check_quant_types(by_name.values())

    expected = expected_shapes(config)
    sources = []
    for gguf_name, tensor in by_name.items():
        hf_name = hf_tensor_name(gguf_name)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        if hf_name not in expected:
            raise ModelFormatError(f"GGUF tensor {gguf_name!r} ({hf_name}) does not belong in a {arch} model")
        if shape != expected[hf_name]:
            raise ModelFormatError(f"GGUF tensor {gguf_name!r} has shape {shape}, expected {expected[hf_name]}")
        sources.append(_tensor_source(tensor, hf_name, shape, config))
    missing = sorted(set(expected) - {s.spec.name for s in sources})
    if missing:
        raise ModelFormatError(f"GGUF file lacks tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")

    tokenizer = build_tokenizer(metadata)
    return ModelSource(
        source_format="gguf",
        hf_config=config,
        tokenizer_json=tokenizer.to_str(),
        tokenizer_config=build_tokenizer_config(metadata, model_max_length=config["max_position_embeddings"]),
        generation_config=None,
        tensors=tuple(sources),
    )


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every key/value of a GGUF header (not the ``GGUF.*`` framing fields) as Python values."""
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = field.contents()
        except (ValueError, UnicodeDecodeError, IndexError) as exc:
            raise ModelFormatError(f"GGUF metadata {key!r} is unreadable: {exc}") from exc
    return metadata


def hf_config_from_gguf(
    metadata: Mapping[str, Any], tensor_names: frozenset[str], *, rope_factors: np.ndarray | None = None
) -> dict[str, Any]:
    """The Hugging Face ``config.json`` content for a GGUF of a supported architecture.

    ``tensor_names`` are the file's tensor names (they decide tied embeddings and attention
    biases); ``rope_factors`` is the ``rope_freqs.weight`` tensor of Llama 3 style files.
    """
    arch = str(metadata.get("general.architecture"))

    def field(key: str, default: Any = None, *, kind: type = int) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelFormatError(f"GGUF metadata lacks {arch}.{key}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelFormatError(f"GGUF metadata {arch}.{key} is {value!r}, expected one {kind.__name__}")
        if kind is int and (value != int(value) or value < 0):
            raise ModelFormatError(f"GGUF metadata {arch}.{key} is {value!r}, expected a non-negative integer")
        return kind(value)

    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_default = len(tokens) if isinstance(tokens, list) else None
    hidden = field("embedding_length")
    heads = field("attention.head_count")
    if heads == 0 or hidden % heads:
        raise ModelFormatError(f"GGUF hidden size {hidden} is not divisible by {heads} attention heads")
    head_dim = field("attention.key_length", metadata.get(f"{arch}.rope.dimension_count", hidden // heads))
    config: dict[str, Any] = {
        "architectures": [_HF_ARCHITECTURE[arch]],
        "model_type": arch,
        "vocab_size": field("vocab_size", vocab_default),
        "hidden_size": hidden,
        "intermediate_size": field("feed_forward_length"),
        "num_hidden_layers": field("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": field("attention.layer_norm_rms_epsilon", kind=float),
        "rope_theta": field("rope.freq_base", 10000.0, kind=float),
        "rope_scaling": _rope_scaling(metadata, arch, rope_factors, head_dim=head_dim),
        "max_position_embeddings": field("context_length"),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    if config["num_key_value_heads"] == 0 or heads % config["num_key_value_heads"]:
        raise ModelFormatError(f"GGUF has {heads} heads, not a multiple of {config['num_key_value_heads']} KV heads")
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["mlp_bias"] = False
    else:
        config["use_sliding_window"] = False
    vocab = config["vocab_size"]
    for name, key in (("bos_token_id", "bos"), ("pad_token_id", "padding")):
        token_id = special_token_id(metadata, key, vocab)
        if token_id is not None:
            config[name] = token_id
    eos = [i for key in ("eos", "eot", "eom") if (i := special_token_id(metadata, key, vocab)) is not None]
    eos = list(dict.fromkeys(eos))
    if eos:
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return config


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama-style model with ``config`` holds, with its Hugging Face shape."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    has_qkv_bias = config["model_type"] == "qwen2" or bool(config.get("attention_bias"))
    has_o_bias = config["model_type"] == "llama" and bool(config.get("attention_bias"))
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q_rows, hidden),
            p + "self_attn.k_proj.weight": (kv_rows, hidden),
            p + "self_attn.v_proj.weight": (kv_rows, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_rows),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
        if has_qkv_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q_rows,),
                p + "self_attn.k_proj.bias": (kv_rows,),
                p + "self_attn.v_proj.bias": (kv_rows,),
            }
        if has_o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (hidden,)
    return shapes


def hf_tensor_name(gguf_name: str) -> str:
    """The Hugging Face name of a llama.cpp tensor name (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``); :class:`ModelFormatError` for unknown names."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.fullmatch(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{int(match.group(1))}.{_BLOCK_NAMES[match.group(2)]}"
    raise ModelFormatError(f"GGUF tensor {gguf_name!r} is not part of a supported model")


def unpermute_rope_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row interleaving of a query/key projection (weight or bias) with ``n_heads`` heads.

    llama.cpp stores each head's rows as ``(2, head_dim/2)`` halves interleaved pairwise for its
    rotary kernel; Hugging Face keeps them as two contiguous halves.
    """
    rows = weights.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ModelFormatError(f"cannot split {rows} projection rows into {n_heads} rotary heads")
    return weights.reshape(n_heads, rows // n_heads // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def llama3_rope_factors(
    head_dim: int, rope_theta: float, factor: float, low_freq_factor: float, high_freq_factor: float, original: int
) -> np.ndarray:
    """The per-frequency scaling ``rope_freqs.weight`` holds for Llama 3 style rope scaling."""
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(
        wavelen < original / high_freq_factor, 1.0, np.where(wavelen > original / low_freq_factor, factor, mid)
    )


def _rope_scaling(
    metadata: Mapping[str, Any], arch: str, rope_factors: np.ndarray | None, *, head_dim: int
) -> dict[str, Any] | None:
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if rope_factors is not None:
        return _llama3_scaling(metadata, arch, rope_factors, head_dim=head_dim)
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(metadata[f"{arch}.rope.scaling.factor"])}
    raise ModelFormatError(f"GGUF rope scaling {kind!r} is not supported", hint="supported: none, linear, llama3")


def _llama3_scaling(metadata: Mapping[str, Any], arch: str, factors: np.ndarray, *, head_dim: int) -> dict[str, Any]:
    theta = float(metadata.get(f"{arch}.rope.freq_base", 10000.0))
    original = int(metadata.get(f"{arch}.rope.scaling.original_context_length", 8192))
    factor = float(factors.max())
    expected = llama3_rope_factors(head_dim, theta, factor, 1.0, 4.0, original)
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-4, atol=1e-6):
        raise ModelFormatError(
            "GGUF rope_freqs.weight does not match Llama 3 rope scaling", hint="this rope scaling is not supported"
        )
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": original,
    }


class _PlainArrayReader(GGUFReader):
    """A ``GGUFReader`` whose backing array is a plain ndarray view of its memory map.

    The reader slices its array once per metadata element (twice per vocabulary token and
    merge), and numpy's ``memmap`` subclass makes each slice several times slower than a
    plain view of the same mapping. The view keeps the mapping alive through its base.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "data" and isinstance(value, np.memmap):
            value = value.view(np.ndarray)
        super().__setattr__(name, value)


def _open_reader(path: Path) -> GGUFReader:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFormatError(
            f"{path} is not a GGUF file (bad magic {magic!r})", hint="pass a .gguf file or an HF directory"
        )
    try:
        return _PlainArrayReader(path, "r")
    except Exception as exc:  # the reader raises many kinds of errors on corrupt or truncated files
        raise ModelFormatError(
            f"{path} is a corrupt or truncated GGUF file: {exc}", hint="download the file again"
        ) from exc


def _check_quant_types(tensors: Iterable[ReaderTensor]) -> None:
    seen: set[GGMLQuantizationType] = set()
    for tensor in tensors:
        qtype = tensor.tensor_type
        if qtype in seen or qtype in _KEPT_FLOAT:
            continue
        seen.add(qtype)
        if qtype in _UNQUANTIZED_OTHER:
            raise ModelFormatError(f"GGUF tensor {tensor.name!r} has unsupported type {qtype.name}")
        try:
            dequantize(tensor.data[:1] if tensor.data.ndim > 1 else tensor.data, qtype)
        except NotImplementedError as exc:
            raise ModelFormatError(
                f"GGUF quantization {qtype.name} (tensor {tensor.name!r}) is not supported",
                hint="convert the model with a common quantization (Q4_0, Q4_1, Q8_0, K-quants) or F16",
            ) from exc


def _tensor_source(
    tensor: ReaderTensor, hf_name: str, shape: tuple[int, ...], config: Mapping[str, Any]
) -> TensorSource:
    kept = _KEPT_FLOAT.get(tensor.tensor_type)
    dtype = kept[0] if kept else "float32"
    heads = None
    if config["model_type"] in _ROPE_PERMUTED:
        if ".self_attn.q_proj." in hf_name:
            heads = config["num_attention_heads"]
        elif ".self_attn.k_proj." in hf_name:
            heads = config["num_key_value_heads"]
    return TensorSource(spec=TensorSpec(hf_name, dtype, shape), load=_loader(tensor, shape, heads))


def _loader(tensor: ReaderTensor, shape: tuple[int, ...], rope_heads: int | None) -> Callable[[], memoryview]:
    def load() -> memoryview:
        kept = _KEPT_FLOAT.get(tensor.tensor_type)
        if kept is None:
            array = dequantize(tensor.data, tensor.tensor_type)
        else:
            array = np.asarray(tensor.data).view(kept[1])
        array = array.reshape(shape)
        if rope_heads is not None:
            array = unpermute_rope_rows(array, rope_heads)
        array = np.ascontiguousarray(array)
        return array.astype(array.dtype.newbyteorder("<"), copy=False).data

    return load
