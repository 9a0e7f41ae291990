"""Tiny models, tokenizers, Hugging Face directories and GGUF files built for store tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def square(x):\n    return x * x\n",
    "Hello world! Héllo wörld, naïve café. 1234567890",
    "Volunteers share their computers to run large language models together.",
    "    indented   text\twith\ttabs\n\nand blank lines",
] * 20

TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer (SmolLM-style pre-tokenizer) trained on a small corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_model(model_type: str = "llama", *, vocab_size: int, seed: int = 0, tie: bool = True) -> torch.nn.Module:
    """A randomly initialised tiny causal LM of ``model_type`` (llama or qwen2), in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        TINY_SHAPE,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    if model_type == "llama":
        model = LlamaForCausalLM(LlamaConfig(head_dim=16, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():  # random biases/norms too, so every tensor is distinctive
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 and p.shape[0] == 64 else 0.0))
    return model.eval()


def write_hf_dir(
    path: Path, model: torch.nn.Module, tokenizer: Tokenizer, *, max_shard_size: str | None = None
) -> Path:
    """Save ``model`` (safetensors, optionally sharded) with tokenizer.json and a chat template into ``path``."""
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def llama_cpp_permute(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k row interleaving (the permutation the importer must undo)."""
    return (
        weights.reshape(n_heads, 2, weights.shape[0] // n_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face Llama tensor name."""
    if hf_name in _GGUF_NAMES:
        return _GGUF_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_BLOCK[rest]}"


def encode_gguf_tensor(
    array: np.ndarray, qtype: GGMLQuantizationType
) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """``array`` (float32) as GGUF data of ``qtype``: the data to write and the raw dtype to declare."""
    if qtype == GGMLQuantizationType.F32:
        return array.astype(np.float32), None
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    if qtype == GGMLQuantizationType.Q8_1:  # no quantizer in gguf-py: zero blocks of the right size
        return np.zeros(gguf.quants.quant_shape_to_byte_shape(array.shape, qtype), dtype=np.uint8), qtype
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def write_gguf(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    *,
    arch: str = "llama",
    qtype_for: Callable[[str], GGMLQuantizationType] = lambda name: GGMLQuantizationType.F32,
    tokenizer_model: str = "gpt2",
    rope_original_context: int | None = None,
    extra_tensors: Mapping[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a llama.cpp-style GGUF (q/k permuted for llama)."""
    cfg = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny test model")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if rope_original_context is not None:
        writer.add_rope_scaling_orig_ctx_len(rope_original_context)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    writer.add_token_types([3 if tok in SPECIAL_TOKENS else 1 for tok in tokens])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = tensor.float().numpy()
        if arch == "llama" and ".q_proj." in name:
            array = llama_cpp_permute(array, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            array = llama_cpp_permute(array, cfg.num_key_value_heads)
        data, raw_dtype = encode_gguf_tensor(array, qtype_for(name))
        writer.add_tensor(gguf_name(name), data, raw_dtype=raw_dtype)
    for name, (data, raw_dtype) in (extra_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def expected_gguf_value(tensor: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """What a float32 tensor reads back as after being stored in GGUF as ``qtype`` (in the stored dtype)."""
    array = tensor.float().numpy()
    if qtype == GGMLQuantizationType.F32:
        return torch.from_numpy(array.copy())
    if qtype == GGMLQuantizationType.F16:
        return torch.from_numpy(array.astype(np.float16))
    if qtype == GGMLQuantizationType.BF16:
        return tensor.float().to(torch.bfloat16)
    restored = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
    return torch.from_numpy(np.ascontiguousarray(restored.reshape(array.shape)))
