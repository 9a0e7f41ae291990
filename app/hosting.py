"""Hosting a pool from the desktop app: a ``butterfly coordinator`` child process.

The app never runs the coordinator in its own process (that would load torch into the
tray): :class:`HostedCoordinator` starts ``python -m cli coordinator …`` built by
:func:`coordinator_argv`, reads the address and the invite it prints
(:func:`parse_coordinator_line`), and stops it with a polite terminate (the coordinator
says goodbye to its volunteers), killing it only if it does not exit in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from core.errors import ConfigError, PoolUnavailable

log = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 600.0
"""Seconds a coordinator may take to come up; importing a large model the first time is slow."""

STOP_TIMEOUT_S: Final = 15.0
"""Seconds a coordinator gets to say goodbye before it is killed."""

MAX_POOL_NAME_CHARS: Final = 63
ModelKind = Literal["default", "hf", "gguf"]

_POOL_LINE = re.compile(r"Pool (?P<name>.+) \((?P<pool_id>bf1[a-z2-7]{26})\) serving (?P<model>.+)")
_FIELD_LINE = re.compile(r"\s*(?P<key>clients|volunteers|invite):\s+(?P<value>\S+)")


@dataclass(frozen=True, slots=True)
class HostRequest:
    """What the user asked for in "Host a pool…"; validated on construction.

    ``model`` is ``"default"`` (the embedded SmolLM2) or the path of a ``.gguf`` file or
    a Hugging Face folder. ``share_on_network`` listens on every interface (and tells
    volunteers this machine's LAN address); otherwise only this machine can join.
    ``open_pool`` admits volunteers without an invite. ``port`` 0 picks a free port
    (only when not sharing: others must know the port).
    """

    model: str = "default"
    pool_name: str = "Butterfly pool"
    port: int = 8765
    share_on_network: bool = False
    open_pool: bool = False

    def __post_init__(self) -> None:
        name = self.pool_name.strip()
        if not name or len(name) > MAX_POOL_NAME_CHARS or any(ord(c) < 32 for c in name):
            raise ConfigError(
                f"the pool name must be 1 to {MAX_POOL_NAME_CHARS} printable characters",
                hint="choose a short name people will recognise",
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}", hint="8765 is the usual port")
        if self.share_on_network and self.port == 0:
            raise ConfigError("a pool shared on the network needs a fixed port", hint="use 8765, or any free port above 1024")


def check_model_source(kind: ModelKind, path: str = "") -> str:
    """The ``--model`` value for the user's choice; raises :class:`ConfigError` saying what is wrong.

    ``"default"`` needs no path; a GGUF choice must name an existing ``.gguf`` file; a
    Hugging Face choice must name a folder holding ``config.json``.
    """
    if kind == "default":
        return "default"
    if not path.strip():
        raise ConfigError("choose a model file or folder first", hint="use Browse… or pick the default model")
    source = Path(path).expanduser()
    if kind == "gguf":
        if source.suffix.lower() != ".gguf" or not source.is_file():
            raise ConfigError(f"{source} is not a .gguf file", hint="pick a GGUF model file")
        return str(source)
    if kind == "hf":
        if not (source / "config.json").is_file():
            raise ConfigError(
                f"{source} is not a Hugging Face model folder (it has no config.json)",
                hint="pick the folder with config.json, *.safetensors and tokenizer.json",
            )
        return str(source)
    raise ConfigError(f"unknown model kind {kind!r}", hint="use default, hf or gguf")


def coordinator_argv(request: HostRequest, *, python: str, lan_address: str | None = None) -> list[str]:
    """The command that runs the coordinator ``request`` asks for, with ``python``.

    A pool shared on the network listens on all interfaces and tells volunteers to dial
    ``lan_address`` (this machine's address on the network).
    """
    argv = [python, "-m", "cli", "coordinator", "--model", request.model, "--pool-name", request.pool_name.strip(),
            "--port", str(request.port), "--min-volunteers", "1"]
    if request.share_on_network:
        argv += ["--host", "0.0.0.0"]
        if lan_address:
            argv += ["--public-url", f"https://{lan_address}:{request.port}"]
    else:
        argv += ["--host", "127.0.0.1"]
    if request.open_pool:
        argv.append("--open")
    return argv


def parse_coordinator_line(line: str) -> tuple[str, str] | None:
    """One fact from a line the coordinator prints at start: ``("url" | "ws_url" | "invite" | "pool_id" | "model", value)``."""
    match = _POOL_LINE.fullmatch(line.strip())
    if match:
        return "pool_id", match["pool_id"]
    match = _FIELD_LINE.match(line)
    if match:
        key = {"clients": "url", "volunteers": "ws_url", "invite": "invite"}[match["key"]]
        return key, match["value"]
    return None


def lan_address() -> str | None:
    """This machine's IPv4 address on its default route, or None; sends nothing. Never raises."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route, no packet leaves
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("0.") else address


@dataclass(frozen=True, slots=True)
class HostedInfo:
    """What a running coordinator told us about itself."""

    url: str
    ws_url: str
    invite: str
    pool_id: str


class HostedCoordinator:
    """One coordinator child process started from the app."""

    def __init__(self, request: HostRequest, *, argv: Sequence[str] | None = None, cwd: Path | None = None) -> None:
        self.request = request
        self._argv = list(argv) if argv is not None else coordinator_argv(request, python=sys.executable, lan_address=lan_address())
        self._cwd = cwd
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.output: list[str] = []

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self, *, timeout_s: float = START_TIMEOUT_S) -> HostedInfo:
        """Start the coordinator and wait until it prints its address and invite.

        Raises :class:`PoolUnavailable` with the coordinator's last words if it exits or
        does not come up within ``timeout_s``.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=self._cwd, env=env,
        )
        facts: dict[str, str] = {}
        try:
            await asyncio.wait_for(self._read_facts(facts), timeout_s)
        except TimeoutError:
            await self.stop()
            raise PoolUnavailable(f"the coordinator did not start within {timeout_s:.0f} s", hint=self._last_words()) from None
        if "invite" not in facts:
            await self.stop()
            raise PoolUnavailable("the coordinator stopped while starting", hint=self._last_words())
        self._drain = asyncio.create_task(self._keep_reading(), name="coordinator-output")
        return HostedInfo(facts.get("url", ""), facts.get("ws_url", ""), facts["invite"], facts.get("pool_id", ""))

    async def stop(self) -> None:
        """Ask the coordinator to shut down; kill it after :data:`STOP_TIMEOUT_S`. Never raises."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._drain is not None:
            self._drain.cancel()

    async def wait(self) -> int:
        """Wait for the child to exit; its exit code."""
        assert self._proc is not None
        return await self._proc.wait()

    async def _read_facts(self, facts: dict[str, str]) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while "invite" not in facts:
            raw = await self._proc.stdout.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self._remember(line)
            fact = parse_coordinator_line(line)
            if fact is not None:
                facts[fact[0]] = fact[1]

    async def _keep_reading(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while raw := await self._proc.stdout.readline():
            self._remember(raw.decode("utf-8", "replace").rstrip())

    def _remember(self, line: str) -> None:
        self.output.append(line[:500])
        del self.output[:-200]

    def _last_words(self) -> str:
        tail = [line for line in self.output if line.strip()][-3:]
        return " | ".join(tail) if tail else "it printed nothing"
