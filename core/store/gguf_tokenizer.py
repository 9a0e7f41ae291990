"""Building a Hugging Face ``tokenizer.json`` from a GGUF file's ``tokenizer.*`` metadata.

A GGUF carries its vocabulary, merges, token types and special token ids as metadata
under llama.cpp's key names. For byte-level BPE vocabularies (``tokenizer.ggml.model ==
"gpt2"``: GPT-2, SmolLM, StarCoder, Llama 3, Qwen2 ...) this rebuilds the equivalent
``tokenizers`` pipeline: the pre-tokenizer split llama.cpp uses for the file's
``tokenizer.ggml.pre``, byte-level BPE, byte-level decoding, and BOS/EOS insertion as
the file's ``add_bos_token``/``add_eos_token`` flags ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from core.errors import ModelFormatError

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

_GPT2_FAMILY = frozenset({"gpt2", "gpt-2", "default", "phi-2", "roberta-bpe"})
_GPT2_DIGITS_FAMILY = frozenset({"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", "command-r"})

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_FAMILY = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_NFC_FAMILY = frozenset({"qwen2", "deepseek-r1-qwen"})

SUPPORTED_PRE_TOKENIZERS: tuple[str, ...] = tuple(sorted(_GPT2_FAMILY | _GPT2_DIGITS_FAMILY | set(_SPLIT_FAMILY)))
"""Values of ``tokenizer.ggml.pre`` this module can rebuild."""


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (the byte-level alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` a GGUF's ``tokenizer.*`` metadata describes.

    Raises :class:`ModelFormatError` for a vocabulary type or pre-tokenizer this module
    cannot rebuild faithfully, and for inconsistent metadata.
    """
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelFormatError(
            f"GGUF tokenizer type {kind!r} is not supported (only byte-level BPE, 'gpt2')",
            hint="import the model's Hugging Face directory (with tokenizer.json) instead",
        )
    tokens = _string_list(metadata, "tokenizer.ggml.tokens")
    merges = _string_list(metadata, "tokenizer.ggml.merges")
    token_types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(token_types) != len(tokens):
        raise ModelFormatError("GGUF tokenizer.ggml.token_type length does not match the vocabulary")

    alphabet = set(bytes_to_unicode().values())
    spelling = bytes_to_unicode()
    # Later duplicates win, as a dict built in vocabulary order does in the reference loader.
    vocab = {
        (tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))): i
        for i, tok in enumerate(tokens)
    }
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ModelFormatError(f"GGUF merge {merge!r} is not two space-separated tokens")
        pairs.append((parts[0], parts[1]))

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=False)
    )
    pre = str(metadata.get("tokenizer.ggml.pre") or "default")
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    if pre in _NFC_FAMILY:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()

    special = [
        AddedToken(tok, normalized=False, special=True)
        for tok, kind_ in zip(tokens, token_types, strict=True)
        if kind_ == TOKEN_TYPE_CONTROL and set(tok) <= alphabet
    ]
    tokenizer.add_special_tokens(special)
    user = [
        AddedToken(tok, normalized=False, special=False)
        for tok, kind_ in zip(tokens, token_types, strict=True)
        if kind_ == TOKEN_TYPE_USER_DEFINED and tok in vocab
    ]
    tokenizer.add_tokens(user)
    tokenizer.post_processor = _post_processor(metadata, tokens)
    return tokenizer


def build_tokenizer_config(metadata: Mapping[str, Any], *, model_max_length: int | None) -> dict[str, Any]:
    """The ``tokenizer_config.json`` content for a GGUF: special tokens, BOS/EOS flags, chat template."""
    tokens = _string_list(metadata, "tokenizer.ggml.tokens")
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = special_token_id(metadata, key, len(tokens))
        if token_id is not None:
            config[name] = tokens[token_id]
    config["add_bos_token"] = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    config["add_eos_token"] = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    template = metadata.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = template
    return config


def special_token_id(metadata: Mapping[str, Any], key: str, vocab_size: int) -> int | None:
    """The id ``tokenizer.ggml.<key>_token_id`` names, or ``None`` when absent; checked against the vocabulary."""
    value = metadata.get(f"tokenizer.ggml.{key}_token_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ModelFormatError(f"GGUF tokenizer.ggml.{key}_token_id {value!r} is outside the vocabulary")
    return int(value)


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in _GPT2_FAMILY:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_DIGITS_FAMILY:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _SPLIT_FAMILY:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_FAMILY[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ModelFormatError(
        f"GGUF pre-tokenizer {pre!r} is not supported",
        hint=f"supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}; or import the Hugging Face directory instead",
    )


def _post_processor(metadata: Mapping[str, Any], tokens: Sequence[str]) -> processors.PostProcessor:
    first: list[str] = []
    last: list[str] = []
    specials: dict[str, int] = {}
    for key, flag, where in (("bos", "add_bos_token", first), ("eos", "add_eos_token", last)):
        token_id = special_token_id(metadata, key, len(tokens))
        if metadata.get(f"tokenizer.ggml.{flag}") and token_id is not None:
            where.append(tokens[token_id])
            specials[tokens[token_id]] = token_id
    single = [*first, "$A", *last]
    pair = [*single, *(f"{t}:1" for t in first), "$B:1", *(f"{t}:1" for t in last)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(specials.items()))


def _string_list(metadata: Mapping[str, Any], key: str) -> list[str]:
    value = metadata.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ModelFormatError(f"GGUF metadata {key!r} is missing or not a list of strings")
    return list(value)
