"""The local model store: import models once, then serve their tensors' raw bytes cheaply.

Layout: one directory per model, ``<root>/<model_id>/``, holding ``manifest.json``,
``model.safetensors``, ``config.json``, ``tokenizer.json``, ``tokenizer_config.json``
(and ``generation_config.json`` when the source has one). The directory is a plain
Hugging Face model directory. Imports are written to a temporary directory and renamed
into place, so a model directory is either complete or absent.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from core.errors import ButterflyError, ModelFormatError, StoreError
from core.store import gguf_import, hf_import
from core.store.manifest import Manifest, TensorEntry, is_valid_model_id, thaw_json
from core.store.safetensors_file import entries_match_header, read_header, write_tensors
from core.store.source import ModelSource, fingerprint_files, model_id_for
from core.store.tokenizer import TextTokenizer

if TYPE_CHECKING:
    import torch

    from core.model.config import ModelConfig

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
_TMP_PREFIX = ".importing-"
_DISK_MARGIN_BYTES = 64 * 1024 * 1024


def tensor_sha256(data: bytes | memoryview) -> str:
    """Hex sha256 of a tensor's raw bytes, as recorded in manifests."""
    return hashlib.sha256(data).hexdigest()


def default_store_root() -> Path:
    """Where models live unless told otherwise: the user's cache directory, ``butterfly/models``."""
    return Path(platformdirs.user_cache_dir("butterfly")) / "models"


class StoredModel:
    """One model in the store, its weights file memory-mapped read-only.

    ``path`` is the model directory and ``manifest`` its validated manifest. Opening
    checks that the weights file's header agrees with the manifest; ``verify`` re-hashes
    the bytes themselves.
    """

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        weights = path / manifest.weights_file
        try:
            with weights.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                header = read_header(f, size, source=str(weights))
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except FileNotFoundError as exc:
            raise StoreError(f"model {manifest.model_id} lacks its weights file", hint="re-import the model") from exc
        except ModelFormatError as exc:
            raise StoreError(
                f"model {manifest.model_id} is damaged: {exc.message}", hint="re-import the model"
            ) from exc
        mismatch = entries_match_header(manifest.tensors.values(), header)
        if mismatch is not None or len(header) != len(manifest.tensors):
            raise StoreError(
                f"model {manifest.model_id}: weights file and manifest disagree"
                + (f" on tensor {mismatch!r}" if mismatch else ""),
                hint="re-import the model",
            )

    @classmethod
    def open(cls, path: Path) -> StoredModel:
        """Open the model directory ``path``; :class:`StoreError` if it is missing or damaged."""
        try:
            text = (path / MANIFEST_FILE).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise StoreError(
                f"{path} holds no stored model (no {MANIFEST_FILE})", hint="import the model first"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path / MANIFEST_FILE}: {exc}") from exc
        try:
            manifest = Manifest.from_json(text)
        except ModelFormatError as exc:
            raise StoreError(f"the manifest in {path} is invalid: {exc.message}", hint="re-import the model") from exc
        return cls(path, manifest)

    @property
    def model_id(self) -> str:
        """The model's id in the store."""
        return self.manifest.model_id

    @property
    def hf_config(self) -> dict[str, Any]:
        """A fresh, mutable copy of the model's Hugging Face ``config.json``."""
        config: dict[str, Any] = thaw_json(self.manifest.hf_config)
        return config

    @cached_property
    def config(self) -> ModelConfig:
        """The model's :class:`~core.model.config.ModelConfig`, parsed once from its HF config."""
        from core.model.config import ModelConfig

        return ModelConfig.from_hf(self.hf_config)

    def entry(self, name: str) -> TensorEntry:
        """The manifest entry of tensor ``name``; :class:`StoreError` if the model has none."""
        entry = self.manifest.tensors.get(name)
        if entry is None:
            raise StoreError(f"model {self.model_id} has no tensor {name!r}")
        return entry

    def tensor_bytes(self, name: str) -> memoryview:
        """The tensor's raw little-endian bytes as stored: a read-only slice of the mmap, no copy."""
        entry = self.entry(name)
        if entry.nbytes == 0 or self._map is None:
            return memoryview(b"")
        return memoryview(self._map)[entry.offset : entry.end].toreadonly()

    def tensor(self, name: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor as a new (writable, independent of the store) CPU tensor, cast to ``dtype`` if given."""
        import torch

        entry = self.entry(name)
        stored = getattr(torch, entry.dtype)
        if entry.nbytes == 0:
            out = torch.empty(entry.shape, dtype=stored)
        else:
            out = torch.frombuffer(bytearray(self.tensor_bytes(name)), dtype=stored).reshape(entry.shape)
        return out if dtype is None or dtype == stored else out.to(dtype)

    def tokenizer(self) -> TextTokenizer:
        """The model's tokenizer and chat template (loaded once)."""
        return self._tokenizer

    @cached_property
    def _tokenizer(self) -> TextTokenizer:
        return TextTokenizer.from_dir(self.path)

    def verify(self) -> None:
        """Re-hash every tensor; :class:`StoreError` naming the first whose bytes do not match the manifest."""
        for entry in self.manifest.tensors.values():
            if tensor_sha256(self.tensor_bytes(entry.name)) != entry.sha256:
                raise StoreError(
                    f"tensor {entry.name!r} of model {self.model_id} does not match its sha256",
                    hint="the stored file is corrupt; delete the model directory and import it again",
                )

    def close(self) -> None:
        """Release the memory map (views handed out by ``tensor_bytes`` must be released first)."""
        if self._map is not None:
            self._map.close()
            self._map = None


class ModelStore:
    """A directory of imported models (default: :func:`default_store_root`).

    ``clock`` supplies the import timestamps recorded in manifests.
    """

    def __init__(self, root: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root) if root is not None else default_store_root()
        self._clock = clock

    def import_path(self, source: Path, *, name: str | None = None) -> StoredModel:
        """Import a ``.gguf`` file or a Hugging Face directory, or reuse it if already stored.

        The model id is the slug of ``name`` (default: the file stem or directory name) plus a
        hash of the source's content, so importing the same source under the same name again
        returns the stored model without converting anything.
        Raises :class:`ModelFormatError` for unusable sources and :class:`StoreError` when the
        store cannot be written (``"disk full"`` when out of space).
        """
        source = Path(source).expanduser().resolve()
        if source.is_dir():
            files = hf_import.source_files(source)
            default_name, opener = source.name, hf_import.open_hf_dir
        elif source.is_file():
            files = [("gguf", source)]
            default_name, opener = source.stem, gguf_import.open_gguf
        else:
            raise StoreError(f"{source} does not exist", hint="pass a .gguf file or a Hugging Face model directory")
        name = name or default_name
        model_id = model_id_for(name, fingerprint_files(files))
        existing = self._reuse(model_id)
        if existing is not None:
            return existing
        converted = opener(source)
        _check_runnable(converted)
        return self._write(model_id, name, str(source), converted)

    def get(self, model_id: str) -> StoredModel:
        """The stored model ``model_id``; :class:`StoreError` if it is not in the store."""
        path = self.root / model_id
        if not is_valid_model_id(model_id) or not (path / MANIFEST_FILE).is_file():
            known = ", ".join(m.model_id for m in self.list()) or "none"
            raise StoreError(f"no model {model_id!r} in {self.root}", hint=f"import it first; stored models: {known}")
        return StoredModel.open(path)

    def list(self) -> list[Manifest]:
        """Manifests of every intact stored model, sorted by name then id (damaged ones are skipped and logged)."""
        if not self.root.is_dir():
            return []
        manifests = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not (path / MANIFEST_FILE).is_file():
                continue
            try:
                manifests.append(Manifest.from_json((path / MANIFEST_FILE).read_text(encoding="utf-8")))
            except (OSError, ModelFormatError) as exc:
                log.warning("skipping damaged model directory %s: %s", path, exc)
        return sorted(manifests, key=lambda m: (m.name, m.model_id))

    def _reuse(self, model_id: str) -> StoredModel | None:
        path = self.root / model_id
        if not path.exists():
            return None
        try:
            return StoredModel.open(path)
        except StoreError as exc:
            log.warning("replacing damaged model directory %s: %s", path, exc)
            shutil.rmtree(path, ignore_errors=True)
            return None

    def _write(self, model_id: str, name: str, source: str, converted: ModelSource) -> StoredModel:
        needed = sum(t.spec.nbytes for t in converted.tensors)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.root).free
            if free < needed + _DISK_MARGIN_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{model_id}-", dir=self.root))
        except OSError as exc:
            raise _store_write_error(exc, self.root, needed) from exc
        final = self.root / model_id
        try:
            entries = _write_weights(tmp / WEIGHTS_FILE, converted)
            _write_json(tmp / "config.json", converted.hf_config)
            (tmp / "tokenizer.json").write_text(converted.tokenizer_json, encoding="utf-8")
            _write_json(tmp / "tokenizer_config.json", converted.tokenizer_config)
            if converted.generation_config is not None:
                _write_json(tmp / "generation_config.json", converted.generation_config)
            manifest = Manifest(
                model_id=model_id,
                name=name,
                source=source,
                source_format=converted.source_format,
                hf_config=converted.hf_config,
                tensors={e.name: e for e in entries},
                weights_file=WEIGHTS_FILE,
                created_at=self._clock(),
            )
            _write_text_synced(tmp / MANIFEST_FILE, manifest.to_json())
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / MANIFEST_FILE).is_file():  # not merely a concurrent import of the same model
                    raise
        except OSError as exc:
            raise _store_write_error(exc, self.root, needed) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return StoredModel.open(final)


def _write_weights(path: Path, converted: ModelSource) -> list[TensorEntry]:
    loaders = {t.spec.name: t.load for t in converted.tensors}
    with path.open("wb") as out:
        entries = write_tensors(out, [t.spec for t in converted.tensors], lambda spec: loaders[spec.name]())
        _sync(out)
    return entries


def _check_runnable(converted: ModelSource) -> None:
    """Refuse, before writing anything, a model whose config the model runtime cannot serve."""
    from core.model.config import ModelConfig

    ModelConfig.from_hf(converted.hf_config)


def _store_write_error(exc: OSError, root: Path, needed: int) -> ButterflyError:
    if exc.errno == errno.ENOSPC:
        return StoreError(
            f"disk full: importing needs about {needed / 2**20:.0f} MiB in {root}",
            hint="free disk space or choose another store directory",
        )
    return StoreError(f"cannot write to the model store {root}: {exc}", hint="check the directory's permissions")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(thaw_json(value), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_text_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        _sync(f)


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
