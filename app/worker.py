"""The compute process: the volunteer runs here, apart from the tray, at low priority.

The desktop app never imports torch: it starts ``python -m app.worker`` and talks to it
through pipes, one JSON object per line.

- The app writes one :class:`WorkerRequest` line first, then commands:
  ``{"cmd": "drain"}`` (finish the work in hand, then leave) or ``{"cmd": "stop"}``
  (leave now). End of input means the app is gone, and the worker leaves now.
- The worker writes events: ``machine`` (what it measured), ``status`` (the
  volunteer's words), ``joined`` (the pool id it proved), ``stats`` (steps served and
  layers held, twice a second), ``log``, ``error`` (``kind``, ``message``, ``hint``) and
  finally ``exit`` (``reason``).

:class:`WorkerHandle` is the app's side; :func:`main` the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

log = logging.getLogger(__name__)

MAX_LINE_BYTES: Final = 256 * 1024
"""Longest line either side reads; longer ones are dropped."""

STATS_INTERVAL_S: Final = 0.5
NICE_LEVEL: Final = 10
"""How much lower than normal the compute process runs on POSIX systems."""

EXIT_REFUSED: Final = 3
"""Exit code when the pool refused us (bad invite, wrong key): retrying cannot help."""


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    """What the compute process should do: join ``url`` (pinning ``expected_pool_id``), or only measure.

    ``threads`` 0 means all cores; ``memory_bytes`` None means automatic.
    """

    data_dir: str
    url: str = ""
    invite: str | None = None
    expected_pool_id: str = ""
    name: str = ""
    threads: int = 0
    memory_bytes: int | None = None
    probe_only: bool = False

    def to_line(self) -> bytes:
        """The request as the first line the worker reads."""
        return (json.dumps(dataclasses.asdict(self)) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerRequest:
        """The request a line held; unknown keys are ignored. Raises ValueError when a field is mistyped."""
        known = {f.name for f in dataclasses.fields(cls)}
        request = cls(**{k: v for k, v in data.items() if k in known})
        if not isinstance(request.data_dir, str) or not isinstance(request.url, str) or not isinstance(request.threads, int):
            raise ValueError("malformed worker request")
        return request


def decode_line(raw: bytes) -> dict[str, Any] | None:
    """One event or command from a line, or None when it is too long, not JSON or not an object."""
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def worker_argv() -> list[str]:
    """The command that starts the compute process with this interpreter."""
    return [sys.executable, "-m", "app.worker"]


class WorkerHandle:
    """The app's side of one compute process: start it, send it commands, read its events.

    ``on_event`` is called on the asyncio loop that called :meth:`start`, once per event.
    """

    def __init__(
        self,
        request: WorkerRequest,
        *,
        on_event: Callable[[dict[str, Any]], None],
        argv: list[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.request = request
        self._on_event = on_event
        self._argv = argv or worker_argv()
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.stopping = False
        self.draining = False

    async def start(self) -> None:
        """Start the process and hand it the request."""
        env = dict(self._env if self._env is not None else os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=MAX_LINE_BYTES * 2,
        )
        self._write(self.request.to_line())
        self._reader = asyncio.create_task(self._read(), name="worker-events")

    def drain(self) -> None:
        """Finish the work in hand, then leave the pool and exit."""
        self.draining = True
        self._write(b'{"cmd": "drain"}\n')

    def stop(self) -> None:
        """Leave the pool now and exit (the pool moves the work elsewhere)."""
        self.stopping = True
        self._write(b'{"cmd": "stop"}\n')

    async def wait(self) -> int:
        """Wait until the process has exited and every event was delivered; its exit code."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return code

    async def kill(self) -> None:
        """End the process at once."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return None if self._proc is None else self._proc.pid

    def _write(self, data: bytes) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._proc.stdin.write(data)

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None and self._proc.stderr is not None
        stderr = asyncio.create_task(self._read_stderr(self._proc.stderr))
        try:
            while True:
                try:
                    raw = await self._proc.stdout.readline()
                except ValueError:  # a line over the stream limit
                    continue
                if not raw:
                    break
                event = decode_line(raw)
                if event is not None and isinstance(event.get("event"), str):
                    self._on_event(event)
        finally:
            await stderr

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                continue
            if not raw:
                return
            text = raw.decode("utf-8", "replace").rstrip()
            if text:
                self._on_event({"event": "log", "level": "WARNING", "text": text[:500]})


# --- the worker's side ----------------------------------------------------------------


class _Emitter:
    """Writes events as JSON lines; safe from any thread."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, default=str)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # the app is gone; nothing to tell


class _EventLogHandler(logging.Handler):
    def __init__(self, emit: _Emitter) -> None:
        super().__init__(logging.INFO)
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and not record.name.startswith(("app", "core")):
            return
        with contextlib.suppress(Exception):
            self._emit("log", level=record.levelname, text=record.getMessage()[:500])


def lower_priority() -> None:
    """Run this process below normal priority, so compute never makes the desktop sluggish. Never raises."""
    try:
        import psutil

        process = psutil.Process()
        if sys.platform == "win32":
            process.nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
        else:
            process.nice(NICE_LEVEL)
    except Exception as exc:  # noqa: BLE001 - priority is a courtesy
        log.debug("could not lower the compute priority: %s", exc)


def _machine_event(emit: _Emitter, request: WorkerRequest) -> Any:
    """Probe and quick-measure this machine, tell the app, and return the quick profile."""
    from app.hardware.cache import default_cache_path, load_entries
    from app.hardware.probe import probe, usable_devices
    from app.profile import quick_profile

    info = probe()
    profile = quick_profile(memory_bytes=request.memory_bytes, threads=request.threads or None, name=request.name)
    benchmarks = []
    for entry in load_entries(default_cache_path()).values():
        result = entry.get("result") if isinstance(entry, dict) else None
        if isinstance(result, dict):
            benchmarks.append({k: result.get(k) for k in ("architecture", "dtype", "device", "threads", "seconds_per_layer_decode")})
    emit(
        "machine",
        cpu_model=info.cpu_model,
        physical_cores=info.physical_cores,
        logical_cores=info.logical_cores,
        total_memory_bytes=info.total_memory_bytes,
        accelerator=info.accelerator,
        os_label=info.os_label,
        devices=list(usable_devices(info)),
        seconds_per_layer=profile.seconds_per_layer,
        threads=profile.threads,
        memory_offered_bytes=profile.memory_bytes,
        benchmarks=benchmarks[-8:],
    )
    return profile


async def _serve(request: WorkerRequest, emit: _Emitter, reader: _LineReader) -> int:
    import app.volunteer as volunteer_module
    from core.errors import AuthFailed, ButterflyError

    profile = await asyncio.to_thread(_machine_event, emit, request)
    if request.probe_only:
        emit("exit", reason="measured")
        return 0
    fields = {f.name for f in dataclasses.fields(volunteer_module.VolunteerConfig)}
    values: dict[str, Any] = dict(data_dir=Path(request.data_dir), url=request.url or None, invite=request.invite,
                                  name=request.name, profile=profile)
    if "memory_cap_bytes" in fields:
        values["memory_cap_bytes"] = request.memory_bytes
    if "pool_id" in fields and request.expected_pool_id:
        values["pool_id"] = request.expected_pool_id  # pinned before anything is sent
    config = volunteer_module.VolunteerConfig(**values)
    service_class = getattr(volunteer_module, "VolunteerService", None)
    tally = _StepTally()

    def active() -> Any:
        return getattr(runner, "current", None) if service_class is not None else runner

    def on_status(text: str) -> None:
        emit("status", text=text)
        if text == "connected":
            volunteer = active()
            pool_id = getattr(volunteer, "pool_id", None)
            if request.expected_pool_id and pool_id != request.expected_pool_id:
                raise AuthFailed(
                    f"the pool at {request.url} proved key {pool_id}, not the advertised {request.expected_pool_id}",
                    hint="someone may be impersonating the pool; do not join it",
                )
            emit("joined", pool_id=pool_id)

    runner = service_class(config, on_status=on_status) if service_class is not None else volunteer_module.Volunteer(config, on_status=on_status)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_command(command: dict[str, Any] | None) -> None:
        if command is None or command.get("cmd") == "stop":
            main_task.cancel()
        elif command.get("cmd") == "drain":
            runner.request_drain()

    threading.Thread(target=_read_commands, args=(reader, loop, on_command), daemon=True, name="worker-commands").start()
    stats = asyncio.create_task(_report_stats(emit, active, tally))
    try:
        reason = await runner.run()
        emit("exit", reason=reason if isinstance(reason, str) else "left")
        return 0
    except asyncio.CancelledError:
        emit("exit", reason="stopped")
        return 0
    except AuthFailed as exc:
        emit("error", kind=type(exc).__name__, message=exc.message, hint=exc.hint or "")
        return EXIT_REFUSED
    except ButterflyError as exc:
        emit("error", kind=type(exc).__name__, message=exc.message, hint=exc.hint or "")
        return 1
    finally:
        stats.cancel()
        _report_once(emit, active, tally)


class _LineReader:
    """Lines from a file descriptor, read without Python's buffered stdin (whose lock a reading
    daemon thread would hold at interpreter shutdown)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""

    def readline(self) -> bytes | None:
        """The next line with its newline, or None at end of input."""
        while b"\n" not in self._buffer:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                line, self._buffer = self._buffer, b""
                return line or None
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE_BYTES and b"\n" not in self._buffer:
                self._buffer = b""  # an overlong line is dropped
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"


def _read_commands(reader: _LineReader, loop: asyncio.AbstractEventLoop, on_command: Callable[[dict[str, Any] | None], None]) -> None:
    while (raw := reader.readline()) is not None:
        command = decode_line(raw)
        if command is not None:
            loop.call_soon_threadsafe(on_command, command)
    with contextlib.suppress(RuntimeError):  # the loop may already be closed
        loop.call_soon_threadsafe(on_command, None)


async def _report_stats(emit: _Emitter, active: Callable[[], Any], tally: _StepTally) -> None:
    while True:
        _report_once(emit, active, tally)
        await asyncio.sleep(STATS_INTERVAL_S)


class _StepTally:
    """Steps served over every connection of this process; holds only the current volunteer."""

    def __init__(self) -> None:
        self.finished = 0
        self.current: Any = None

    def total(self, volunteer: Any) -> int:
        if volunteer is not self.current:
            self.finished += int(getattr(self.current, "steps", 0))
            self.current = volunteer
        return self.finished + int(getattr(volunteer, "steps", 0))


def _report_once(emit: _Emitter, active: Callable[[], Any], tally: _StepTally) -> None:
    """Steps served by every connection so far, and the layers the current one holds."""
    volunteer = active()
    layers = []
    for loaded in list(getattr(volunteer, "shards", {}).values()):
        span = getattr(getattr(loaded, "shard", None), "layers", None)
        if span is not None:
            layers.append([span.start, span.end, span.total])
    emit("stats", steps=tally.total(volunteer), layers=layers)


def main() -> int:
    """Run one compute process: read the request from stdin, serve, report on stdout."""
    emit = _Emitter(sys.stdout)
    logging.basicConfig(level=logging.WARNING, handlers=[_EventLogHandler(emit)])
    logging.getLogger("app").setLevel(logging.INFO)
    logging.getLogger("core").setLevel(logging.INFO)
    reader = _LineReader(sys.stdin.fileno())
    first = decode_line(reader.readline() or b"")
    try:
        request = WorkerRequest.from_json(first or {})
    except (TypeError, ValueError) as exc:
        emit("error", kind="ConfigError", message=f"bad request to the compute process: {exc}", hint="")
        return 2
    lower_priority()
    try:
        return asyncio.run(_serve(request, emit, reader))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
