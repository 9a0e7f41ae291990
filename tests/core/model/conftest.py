"""Fixtures: tiny random transformers models saved as safetensors, one per supported variant."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.model.tiny_models import VARIANTS, TinyModel, build


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Each variant in turn: GQA Llama, Qwen2 with biases, Llama-3 RoPE, tied embeddings, Mistral window."""
    return build(request.param, Path(tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The plain GQA Llama variant."""
    return build("llama_gqa", Path(tmp_path_factory.mktemp("llama")))
