"""The desktop agent: one asyncio object that owns everything the tray shows and does.

:class:`Agent` browses for pools, keeps a compute process (:mod:`app.worker`) joined
to the chosen pool while the policy (:func:`app.policy.decide`) allows, pauses and
resumes it, hosts a pool in a child process (:mod:`app.hosting`) and saves the
settings. Front ends send it :mod:`app.commands` values and receive an immutable
:class:`~app.status.AgentStatus` after every change through ``on_status``.

It runs on one asyncio loop (the tray gives it a thread of its own; the headless CLI
its main thread) and never imports torch or Qt: the compute process does the heavy
work, so the tray stays responsive whatever the volunteer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import platformdirs

from app.commands import (
    ApplySettings,
    Command,
    FinishThenPause,
    Join,
    JoinTarget,
    Leave,
    Pause,
    ProbeMachine,
    Resume,
    Shutdown,
    Snooze,
    StartHosting,
    StopHosting,
)
from app.discovery import DiscoveredPools, PoolBrowser, PoolEvent, apply
from app.hosting import HostedCoordinator
from app.platform import PlatformBackend, current_backend
from app.policy import Decision, decide, snooze_until
from app.settings import KnownPool, Settings, default_settings_path, load_settings, save_settings
from app.status import (
    LOG_LINES,
    THROUGHPUT_SAMPLES,
    Activity,
    AgentStatus,
    BenchmarkLine,
    Hosting,
    HostingPhase,
    LayerSpan,
    MachineSummary,
    PoolRef,
)
from app.worker import EXIT_REFUSED, WorkerHandle, WorkerRequest
from core.errors import ButterflyError, ConfigError
from core.types import PoolId

log = logging.getLogger(__name__)

FOREVER: Final = timedelta(days=3650)
"""How far ahead a pause "until resumed" lies for the policy."""

MAX_RETRY_S: Final = 60.0
"""The longest wait before starting a compute process that died unexpectedly again."""

RATE_WINDOW_S: Final = 5
"""Seconds of throughput samples averaged for the rate shown in the tooltip."""


def default_agent_data_dir() -> Path:
    """Where the volunteer's key and pinned pools live: the same folder ``butterfly volunteer`` uses."""
    return Path(platformdirs.user_data_dir("butterfly", appauthor=False)) / "volunteer"


def autostart_command() -> list[str]:
    """The command a login session runs to start the desktop app."""
    return [sys.executable, "-m", "cli", "app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """How the agent runs.

    ``data_dir`` holds this install's key and pinned pools; ``settings_path`` the
    settings (default: the user's config folder). ``discovery`` browses the network for
    pools on ``mdns_interfaces`` (IPv4 addresses; empty: all). ``rejoin_last_pool``
    rejoins the pool joined most recently at start. A compute process that dies
    unexpectedly is started again after ``retry_base_s``, doubling up to
    :data:`MAX_RETRY_S`. ``worker_argv`` replaces the command of the compute process
    (tests). Intervals are in seconds.
    """

    data_dir: Path
    settings_path: Path | None = None
    name: str = ""
    discovery: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    rejoin_last_pool: bool = True
    policy_interval_s: float = 2.0
    tick_s: float = 1.0
    drain_timeout_s: float = 90.0
    quit_timeout_s: float = 5.0
    retry_base_s: float = 2.0
    worker_argv: tuple[str, ...] | None = None


class Agent:
    """The volunteer agent behind the tray; see the module docstring.

    Call :meth:`run` on an asyncio loop; from other threads use :meth:`submit`. ``on_status``
    is called on the loop with each new snapshot. ``clock`` gives local wall-clock time
    (the schedule reads it); ``backend`` answers idle time, battery and start at login.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_status: Callable[[AgentStatus], None],
        backend: PlatformBackend | None = None,
        clock: Callable[[], datetime] = datetime.now,
        settings: Settings | None = None,
    ) -> None:
        self.config = config
        self._on_status = on_status
        self._backend = backend or current_backend()
        self._clock = clock
        self._settings_path = config.settings_path or default_settings_path()
        self.settings = settings if settings is not None else load_settings(self._settings_path)
        try:  # created on its loop, commands may arrive before run() starts
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # policy
        self._idle_s: float | None = None
        self._on_battery: bool | None = None
        self._decision: Decision | None = None
        self._paused_until: datetime | None = None
        self._paused_forever = False
        self._finishing = False
        # the pool and the compute process
        self._target: JoinTarget | None = None
        self._error = ""
        self._worker: WorkerHandle | None = None
        self._phase = ""
        self._last_error_event: dict[str, Any] = {}
        self._failures = 0
        self._retry_at = 0.0
        self._steps_before = 0
        self._worker_steps = 0
        self._layers: tuple[LayerSpan, ...] = ()
        self._connected_since: float | None = None
        self._samples: deque[float] = deque(maxlen=THROUGHPUT_SAMPLES)
        self._last_sample: tuple[float, int] | None = None
        # around it
        self._browser: PoolBrowser | None = None
        self._discovered = DiscoveredPools()
        self._discovery_note = ""
        self._hosted: HostedCoordinator | None = None
        self._hosting: Hosting | None = None
        self._machine: MachineSummary | None = None
        self._probe: WorkerHandle | None = None
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._published: AgentStatus | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        """Run until :class:`~app.commands.Shutdown`; leaves the pool and stops hosting on the way out."""
        self._loop = asyncio.get_running_loop()
        self._note("Butterfly started")
        if self.config.discovery:
            await self._start_discovery()
        if self.config.rejoin_last_pool and self.settings.pools:
            last = self.settings.pools[-1]
            if last.address.startswith(("ws://", "wss://")):
                self._target = JoinTarget(url=last.address, expected_pool_id=last.pool_id, pool_name=last.name)
                self._note(f"rejoining {last.name or last.pool_id}")
        await self._sample_platform()
        self._decide()
        self._reconcile()
        self._publish()
        self._spawn(self._policy_loop())
        self._spawn(self._tick_loop())
        await self._stopped.wait()

    def submit(self, command: Command) -> None:
        """Hand ``command`` to the agent from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self.handle, command)

    def handle(self, command: Command) -> None:
        """Act on ``command`` (on the agent's loop), then publish the new status.

        A command that cannot be carried out is written to the log; it never stops the work in hand.
        """
        try:
            self._handle(command)
        except ButterflyError as exc:
            self._note(f"{exc}")
        self._decide()
        self._reconcile()
        self._publish()

    def _handle(self, command: Command) -> None:
        now = self._clock()
        if isinstance(command, Join):
            self._join(command.target)
        elif isinstance(command, Pause):
            self._paused_forever, self._paused_until, self._finishing = True, None, False
            self._note("paused")
        elif isinstance(command, Snooze):
            self._paused_until, self._paused_forever, self._finishing = snooze_until(now, command.choice), False, False
            self._note(f"snoozed until {self._paused_until:%a %H:%M}")
        elif isinstance(command, Resume):
            self._paused_until, self._paused_forever, self._finishing = None, False, False
            self._error, self._failures, self._retry_at = "", 0, 0.0
            self._note("resumed")
        elif isinstance(command, FinishThenPause):
            if self._worker is None:
                self._paused_forever = True
            else:
                self._finishing = True
            self._note("finishing current work, then pausing")
        elif isinstance(command, Leave):
            self._leave()
        elif isinstance(command, StartHosting):
            self._start_hosting(command)
        elif isinstance(command, StopHosting):
            self._spawn(self._stop_hosting())
        elif isinstance(command, ApplySettings):
            self._apply_settings(command.settings)
        elif isinstance(command, ProbeMachine):
            self._start_probe()
        elif isinstance(command, Shutdown):
            self._spawn(self._shutdown())

    # --- pool membership -----------------------------------------------------------

    def _join(self, target: JoinTarget) -> None:
        if self._worker is not None and self._worker.request.url != target.url:
            self._worker.stop()
        self._target = target
        self._error, self._failures, self._retry_at = "", 0, 0.0
        self._paused_until, self._paused_forever, self._finishing = None, False, False
        self._note(f"joining {target.pool_name or target.url}")

    def _leave(self) -> None:
        target = self._target
        if target is None:
            return
        self._target = None
        self._error, self._finishing = "", False
        self._note(f"leaving {target.pool_name or target.url}")
        settings = self.settings.without_pool(PoolId(target.expected_pool_id))
        self._save_settings(settings)

    def _wants_compute(self) -> bool:
        if self._target is None or self._error or self._finishing:
            return False
        return self._decision is None or self._decision.compute

    def _reconcile(self) -> None:
        """Start, drain or stop the compute process so it matches what is wanted now."""
        worker = self._worker
        want = self._wants_compute()
        if worker is None:
            if want and self._loop is not None and self._loop.time() >= self._retry_at and not self._stopped.is_set():
                self._start_worker()
            return
        if worker.stopping:
            return
        if not want:
            if self._user_paused() or self._error:
                worker.stop()
                self._note("stopped computing")
            elif not worker.draining:
                worker.drain()
                self._note("finishing current work")

    def _user_paused(self) -> bool:
        return self._paused_forever or self._paused_until is not None

    def _start_worker(self) -> None:
        target = self._target
        assert target is not None
        s = self.settings
        request = WorkerRequest(
            data_dir=str(self.config.data_dir),
            url=target.url,
            invite=target.invite,
            expected_pool_id=target.expected_pool_id,
            name=self.config.name,
            threads=s.cpu_threads,
            memory_bytes=None if s.memory_cap_gib is None else int(s.memory_cap_gib * 2**30),
        )
        handle = WorkerHandle(request, on_event=lambda e: self._on_worker_event(handle, e),
                              argv=list(self.config.worker_argv) if self.config.worker_argv else None)
        self._worker, self._phase, self._last_error_event = handle, "starting", {}
        self._worker_steps = 0
        self._spawn(self._run_worker(handle))

    async def _run_worker(self, handle: WorkerHandle) -> None:
        try:
            await handle.start()
        except OSError as exc:
            self._worker = None
            self._error = f"could not start the compute process: {exc}"
            self._publish()
            return
        watchdog = self._spawn(self._drain_watchdog(handle))
        code = await handle.wait()
        watchdog.cancel()
        self._worker_exited(handle, code)

    async def _drain_watchdog(self, handle: WorkerHandle) -> None:
        while not handle.draining:
            await asyncio.sleep(0.5)
        await asyncio.sleep(self.config.drain_timeout_s)
        self._note("the pool did not release us in time; leaving now")
        handle.stop()
        await asyncio.sleep(5.0)
        await handle.kill()

    def _on_worker_event(self, handle: WorkerHandle, event: dict[str, Any]) -> None:
        if handle is self._probe:
            if event.get("event") == "machine":
                self._machine = _machine_summary(event) or self._machine
                self._publish()
            return
        if handle is not self._worker:
            return
        kind = event["event"]
        if kind == "machine":
            self._machine = _machine_summary(event) or self._machine
            if self._phase == "starting":
                self._phase = "connecting"
        elif kind == "status":
            text = str(event.get("text", ""))[:300]
            self._note(text)
            if text == "connected":
                self._phase = "connected"
                self._connected_since = time.monotonic()
                self._failures = 0
            elif text.startswith("reconnecting"):
                self._phase = "reconnecting"
                self._connected_since = None
                self._layers = ()
        elif kind == "joined":
            self._remember_pool(str(event.get("pool_id", "")))
        elif kind == "stats":
            self._worker_steps = _int(event.get("steps"))
            self._layers = _layer_spans(event.get("layers"))
        elif kind == "log":
            self._note(str(event.get("text", ""))[:500])
        elif kind == "error":
            self._last_error_event = event
            self._note(f"error: {event.get('message', '')}")
        elif kind == "exit":
            self._note(f"compute process finished ({event.get('reason', '')})")
        self._publish()

    def _worker_exited(self, handle: WorkerHandle, code: int) -> None:
        if handle is not self._worker:
            return
        self._worker = None
        self._phase = ""
        self._layers = ()
        self._connected_since = None
        self._steps_before += self._worker_steps
        self._worker_steps = 0
        error = self._last_error_event
        expected = handle.stopping or handle.draining
        if code == EXIT_REFUSED or error.get("kind") == "AuthFailed":
            hint = str(error.get("hint") or "")
            self._error = str(error.get("message") or "the pool refused this machine") + (f" ({hint})" if hint else "")
        elif expected:
            if self._finishing:
                self._finishing, self._paused_forever = False, True
                self._note("paused after finishing")
        elif self._target is not None:
            self._failures += 1
            delay = min(MAX_RETRY_S, self.config.retry_base_s * 2.0 ** (self._failures - 1))
            assert self._loop is not None
            self._retry_at = self._loop.time() + delay
            reason = str(error.get("message") or f"exit code {code}")
            self._note(f"the compute process stopped ({reason}); trying again in {delay:.0f} s")
        self._decide()
        self._reconcile()
        self._publish()

    def _remember_pool(self, pool_id: str) -> None:
        target = self._target
        if target is None or pool_id != target.expected_pool_id:
            return
        known = KnownPool(PoolId(pool_id), target.pool_name, target.url)
        if known not in self.settings.pools or self.settings.pools[-1] != known:
            self._save_settings(self.settings.with_pool(known))

    # --- policy --------------------------------------------------------------------

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.policy_interval_s)
            await self._sample_platform()
            self._decide()
            self._reconcile()
            self._publish()

    async def _sample_platform(self) -> None:
        self._idle_s, self._on_battery = await asyncio.gather(
            asyncio.to_thread(self._backend.idle_seconds), asyncio.to_thread(self._backend.on_battery)
        )

    def _decide(self) -> None:
        now = self._clock()
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._note("snooze over")
        paused_until = now + FOREVER if self._paused_forever else self._paused_until
        self._decision = decide(
            now, idle_s=self._idle_s, on_battery=self._on_battery, settings=self.settings,
            user_paused_until=paused_until, previous=self._decision,
        )

    # --- throughput ----------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            self._sample_throughput()
            if self._worker is None:
                self._reconcile()  # a retry may be due
            self._publish()

    def _sample_throughput(self) -> None:
        now = time.monotonic()
        steps = self._steps_before + self._worker_steps
        if self._last_sample is not None:
            then, before = self._last_sample
            self._samples.append(max(0, steps - before) / max(1e-3, now - then))
        self._last_sample = (now, steps)

    # --- discovery -----------------------------------------------------------------

    async def _start_discovery(self) -> None:
        self._browser = PoolBrowser(self._on_pool_event, interfaces=self.config.mdns_interfaces)
        try:
            await self._browser.start()
        except Exception as exc:  # noqa: BLE001 - no multicast: invites still work
            self._browser = None
            self._discovery_note = f"cannot look for pools on this network: {exc}"
            self._note(self._discovery_note)

    def _on_pool_event(self, event: PoolEvent) -> None:
        self._discovered = apply(self._discovered, event)
        self._publish()

    # --- hosting -------------------------------------------------------------------

    def _start_hosting(self, command: StartHosting) -> None:
        if self._hosted is not None and self._hosted.running:
            raise ConfigError("this machine already hosts a pool", hint="stop it first (Hosting › Stop hosting)")
        request = command.request
        hosted = HostedCoordinator(request)
        self._hosted = hosted
        self._hosting = Hosting(HostingPhase.STARTING, request.pool_name, request.model)
        self._note(f"starting a pool {request.pool_name!r} with model {request.model}")
        self._spawn(self._run_hosted(hosted))

    async def _run_hosted(self, hosted: HostedCoordinator) -> None:
        request = hosted.request
        try:
            info = await hosted.start()
        except (ButterflyError, OSError) as exc:
            if self._hosted is hosted:
                self._hosting = Hosting(HostingPhase.FAILED, request.pool_name, request.model, error=str(exc))
                self._note(f"hosting failed: {exc}")
                self._publish()
            return
        if self._hosted is not hosted:
            await hosted.stop()
            return
        self._hosting = Hosting(HostingPhase.RUNNING, request.pool_name, request.model, url=info.url,
                                ws_url=info.ws_url, invite=info.invite, pool_id=info.pool_id)
        self._note(f"hosting {request.pool_name!r} at {info.url}")
        self._publish()
        code = await hosted.wait()
        if self._hosted is hosted:
            self._hosted = None
            self._hosting = Hosting(HostingPhase.FAILED, request.pool_name, request.model,
                                    error=f"the coordinator stopped (exit code {code}): {hosted.output[-1] if hosted.output else ''}")
            self._note(self._hosting.error)
            self._publish()

    async def _stop_hosting(self) -> None:
        hosted, self._hosted, self._hosting = self._hosted, None, None
        self._publish()
        if hosted is not None:
            self._note("stopping the hosted pool")
            await hosted.stop()

    # --- settings and the machine --------------------------------------------------

    def _apply_settings(self, settings: Settings) -> None:
        old = self.settings
        if settings.start_at_login != old.start_at_login:
            try:
                self._backend.set_autostart(settings.start_at_login, autostart_command())
            except ConfigError as exc:
                self._note(f"start at login: {exc}")
                settings = replace(settings, start_at_login=old.start_at_login)
        self._save_settings(settings)
        if (settings.cpu_threads, settings.memory_cap_gib) != (old.cpu_threads, old.memory_cap_gib) and self._worker is not None:
            self._note("the new thread count and memory cap apply from the next connection")
        self._note("settings saved")

    def _save_settings(self, settings: Settings) -> None:
        self.settings = settings
        try:
            save_settings(settings, self._settings_path)
        except ConfigError as exc:
            self._note(f"could not save settings: {exc}")

    def _start_probe(self) -> None:
        if self._machine is not None or self._probe is not None:
            return
        handle = WorkerHandle(
            WorkerRequest(data_dir=str(self.config.data_dir), threads=self.settings.cpu_threads, probe_only=True),
            on_event=lambda e: self._on_worker_event(handle, e),
            argv=list(self.config.worker_argv) if self.config.worker_argv else None,
        )
        self._probe = handle

        async def run() -> None:
            try:
                await handle.start()
                await handle.wait()
            except OSError as exc:
                self._note(f"could not measure this machine: {exc}")
            finally:
                self._probe = None

        self._spawn(run())

    # --- shutdown ------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._note("quitting")
        self._target = None
        if self._browser is not None:
            await self._browser.stop()
            self._browser = None
        worker = self._worker
        if worker is not None:
            worker.drain()
            try:
                await asyncio.wait_for(worker.wait(), self.config.quit_timeout_s)
            except TimeoutError:
                worker.stop()
                try:
                    await asyncio.wait_for(worker.wait(), 3.0)
                except TimeoutError:
                    await worker.kill()
        await self._stop_hosting()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._stopped.set()

    # --- status --------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background job failed", exc_info=task.exception())
            self._note(f"internal error: {task.exception()!r}")

    def _note(self, text: str) -> None:
        if text:
            self._log.append(f"{datetime.now():%H:%M:%S} {text}")
            log.info("%s", text)

    def status(self) -> AgentStatus:
        """The snapshot of this moment."""
        activity, detail = self._activity()
        target = self._target
        pool = None
        if target is not None:
            advert = self._discovered.by_pool_id(target.expected_pool_id)
            model = target.model or (advert.advert.model if advert else "")
            pool = PoolRef(target.expected_pool_id, target.pool_name or (advert.name if advert else ""), target.url, model)
        samples = tuple(self._samples)
        recent = samples[-RATE_WINDOW_S:]
        return AgentStatus(
            activity=activity,
            detail=detail,
            pool=pool,
            discovered=self._discovered.pools,
            discovery_note=self._discovery_note,
            paused_until=self._paused_until,
            layers=self._layers,
            steps_served=self._steps_before + self._worker_steps,
            tokens_per_s=sum(recent) / len(recent) if recent else 0.0,
            throughput=samples,
            uptime_s=0.0 if self._connected_since is None else time.monotonic() - self._connected_since,
            error=self._error,
            hosting=self._hosting,
            machine=self._machine,
            log=tuple(self._log),
        )

    def _activity(self) -> tuple[Activity, str]:
        target, worker = self._target, self._worker
        if self._error:
            return Activity.ERROR, self._error
        if target is None:
            return Activity.IDLE, "Join a pool found on this network, or use an invite"
        if self._finishing:
            return Activity.FINISHING, "Finishing current work, then pausing"
        if self._paused_forever:
            return Activity.PAUSED, "Paused until you resume"
        if self._paused_until is not None:
            return Activity.PAUSED, f"Snoozed until {_when(self._paused_until, self._clock())}"
        if worker is not None and worker.draining:
            reason = self._decision.reason if self._decision is not None and not self._decision.compute else "leaving"
            return Activity.FINISHING, f"Finishing current work ({reason})"
        if self._decision is not None and not self._decision.compute:
            return Activity.WAITING, self._decision.reason[:1].upper() + self._decision.reason[1:]
        name = target.pool_name or "the pool"
        if worker is None:
            if self._failures:
                assert self._loop is not None
                wait = max(0.0, self._retry_at - self._loop.time())
                return Activity.DISCONNECTED, f"Lost {name}; trying again in {wait:.0f} s"
            return Activity.STARTING, "Starting…"
        if self._phase == "starting":
            return Activity.STARTING, "Measuring this machine…"
        if self._phase == "connecting":
            return Activity.CONNECTING, f"Connecting to {name}…"
        if self._phase == "reconnecting":
            return Activity.DISCONNECTED, f"Lost the connection to {name}; reconnecting…"
        if self._layers:
            spans = ", ".join(str(span) for span in self._layers)
            return Activity.SERVING, f"Serving layers {spans} for {name}"
        return Activity.LOADING, f"Connected to {name}; waiting for layers…"

    def _publish(self) -> None:
        status = self.status()
        if status == self._published:
            return
        self._published = status
        try:
            self._on_status(status)
        except Exception:  # noqa: BLE001 - a front end's bug must not stop the agent
            log.exception("status listener failed")


def _when(moment: datetime, now: datetime) -> str:
    return f"{moment:%H:%M}" if moment.date() == now.date() else f"{moment:%a %H:%M}"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _layer_spans(raw: object) -> tuple[LayerSpan, ...]:
    spans = []
    if isinstance(raw, list):
        for item in raw[:16]:
            if isinstance(item, list) and len(item) == 3 and all(isinstance(v, int) for v in item):
                start, end, total = item
                if 0 <= start < end <= total:
                    spans.append(LayerSpan(start, end, total))
    return tuple(sorted(spans, key=lambda s: s.start))


def _machine_summary(event: dict[str, Any]) -> MachineSummary | None:
    try:
        benchmarks = tuple(
            BenchmarkLine(str(b["architecture"]), str(b["dtype"]), str(b["device"]), int(b["threads"]), float(b["seconds_per_layer_decode"]))
            for b in event.get("benchmarks", [])
            if isinstance(b, dict)
        )
        return MachineSummary(
            cpu_model=str(event["cpu_model"]),
            physical_cores=int(event["physical_cores"]),
            logical_cores=int(event["logical_cores"]),
            total_memory_bytes=int(event["total_memory_bytes"]),
            accelerator=str(event["accelerator"]),
            os_label=str(event["os_label"]),
            devices=tuple(str(d) for d in event.get("devices", ["cpu"])),
            seconds_per_layer=float(event.get("seconds_per_layer", 0.0)),
            threads=int(event.get("threads", 0)),
            memory_offered_bytes=int(event.get("memory_offered_bytes", 0)),
            benchmarks=benchmarks,
        )
    except (KeyError, TypeError, ValueError):
        return None
