"""Shared fixtures: real models in a throw-away store, and real pools on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def default_model(store_root: Path):  # noqa: ANN201 - StoredModel
    """The embedded default model (SmolLM2-135M-Instruct), converted once per test session."""
    from core.store.default_model import ensure_default_model
    from core.store.store import ModelStore

    return ensure_default_model(ModelStore(store_root))


def write_word_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer over tokens ``t0 … t{n-1}``, with ``t1`` as end of sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "t1", "bos_token": "t0", "unk_token": "t0", "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}"})
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight Llama with grouped-query attention, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=None,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights make greedy choices decisive (no near-ties)
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(path, safe_serialization=True)
    write_word_tokenizer(path, config.vocab_size)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir: Path, store_root: Path):  # noqa: ANN201 - StoredModel
    from core.store.store import ModelStore

    return ModelStore(store_root).import_path(tiny_llama_dir, name="tiny-llama-gqa")


@dataclass
class LivePool:
    """A coordinator in this process and volunteer processes around it."""

    coordinator: object
    procs: list[subprocess.Popen] = field(default_factory=list)
    data_dir: Path | None = None
    by_name: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn_volunteer(self, name: str, *, invite: str, extra: tuple[str, ...] = (), threads: int = 1) -> subprocess.Popen:
        assert self.data_dir is not None
        cmd = [
            sys.executable, "-m", "cli", "volunteer", "--invite", invite, "--name", name,
            "--data-dir", str(self.data_dir / name), "--threads", str(threads), *extra,
        ]
        if self.coordinator.config.insecure_loopback:  # type: ignore[attr-defined]
            cmd.append("--insecure-loopback")
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=volunteer_env())
        self.procs.append(proc)
        self.by_name[name] = proc
        return proc

    def logs(self) -> str:
        assert self.data_dir is not None
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.data_dir.glob("*.log")))

    async def wait_ready(self, *, stages: int | None = None, timeout: float = 120.0) -> None:
        pool = self.coordinator.pool  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while True:
            if pool.pipelines and (stages is None or len(pool.pipelines[0].stages) == stages):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"pool not ready after {timeout} s ({pool.last_error})\n{self.logs()}")
            for p in self.procs:
                if p.poll() is not None and p.returncode != 0:
                    raise AssertionError(f"a volunteer exited with {p.returncode}\n{self.logs()}")
            await asyncio.sleep(0.05)


def volunteer_env() -> dict[str, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@asynccontextmanager
async def live_pool(
    model, tmp_path: Path, *, volunteers: int, volunteer_args: tuple[str, ...] = (), **config  # noqa: ANN001
) -> AsyncIterator[LivePool]:
    """Start a coordinator on 127.0.0.1 (any free port) and ``volunteers`` volunteer processes.

    The pool speaks plain ws/http (``insecure_loopback``) unless ``insecure_loopback=False``
    is passed, and does not recompute volunteers' results unless ``probation_steps`` or
    ``verify_share`` are passed: most tests are about other things, and
    tests/e2e/test_tls.py and tests/e2e/test_validation.py cover those.
    """
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator

    settings = dict(data_dir=tmp_path / "coordinator", port=0, min_volunteers=max(1, volunteers), settle_s=0.2,
                    step_timeout_s=60.0, insecure_loopback=True, probation_steps=0, verify_share=0.0)
    settings.update(config)
    coordinator = Coordinator(CoordinatorConfig(**settings), model)
    await coordinator.start()
    pool = LivePool(coordinator, data_dir=tmp_path)
    invite = coordinator.invite(ttl_s=600)
    for i in range(volunteers):
        pool.spawn_volunteer(f"v{i + 1}", invite=invite, extra=volunteer_args)
    try:
        yield pool
    finally:
        for p in pool.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # drain and leave for good
        for p in pool.procs:
            try:
                await asyncio.wait_for(asyncio.to_thread(p.wait), 20)
            except TimeoutError:
                p.kill()
                p.wait(timeout=5)
        await coordinator.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: Iterator[pytest.Item]) -> None:
    """Run the slow end-to-end tests last so quick failures surface first."""
    items_list = list(items)  # type: ignore[arg-type]
    items_list.sort(key=lambda item: 1 if item.get_closest_marker("slow") else 0)
    items[:] = items_list  # type: ignore[index]
