"""The agent's state machine with a stand-in compute process: join, pause, snooze, finish, policy, errors, leave.

The compute process is ``fake_worker.py`` (the real line protocol, no torch), the clock
and the platform (battery, idle time, start at login) are test doubles, so every
transition is driven and checked in well under a second each.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.agent import Agent, AgentConfig
from app.commands import ApplySettings, FinishThenPause, Join, JoinTarget, Leave, Pause, Resume, Shutdown, Snooze
from app.policy import BATTERY_CONFIRM_S, MIN_DWELL_S
from app.settings import Settings, load_settings
from app.status import Activity, AgentStatus, LayerSpan
from core.errors import ConfigError
from core.identity import Identity

pytestmark = pytest.mark.timeout(60)

POOL_ID = Identity.generate().fingerprint


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 3, 10, 0)  # a Monday morning

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeBackend:
    name = "fake"
    autostart_supported = True

    def __init__(self) -> None:
        self.battery: bool | None = False
        self.idle: float | None = 3600.0
        self.autostart: list[bool] = []

    def idle_seconds(self) -> float | None:
        return self.idle

    def on_battery(self) -> bool | None:
        return self.battery

    def autostart_enabled(self) -> bool:
        return bool(self.autostart and self.autostart[-1])

    def set_autostart(self, enabled: bool, command: Sequence[str]) -> None:
        if not command:
            raise ConfigError("no command")
        self.autostart.append(enabled)


class Harness:
    def __init__(self, tmp_path: Path, *, settings: Settings | None = None) -> None:
        self.clock = FakeClock()
        self.backend = FakeBackend()
        self.statuses: list[AgentStatus] = []
        self.data_dir = tmp_path / "volunteer"
        self.settings_path = tmp_path / "settings.json"
        config = AgentConfig(
            data_dir=self.data_dir, settings_path=self.settings_path, discovery=False, policy_interval_s=0.05,
            tick_s=0.05, retry_base_s=0.1, quit_timeout_s=3.0, worker_argv=(sys.executable, "-m", "tests.app.fake_worker"),
        )
        self.agent = Agent(config, on_status=self.statuses.append, backend=self.backend, clock=self.clock,
                           settings=settings or Settings(pause_on_battery=True))
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.agent.run())
        await self.until(lambda s: True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.agent.handle(Shutdown())
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)

    @property
    def status(self) -> AgentStatus:
        return self.statuses[-1]

    async def until(self, predicate: Callable[[AgentStatus], bool], timeout: float = 10.0) -> AgentStatus:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (self.statuses and predicate(self.statuses[-1])):
            assert asyncio.get_running_loop().time() < deadline, f"status never matched; last: {self.statuses[-1:]}"
            await asyncio.sleep(0.01)
        return self.statuses[-1]

    def commands(self) -> list[str]:
        path = self.data_dir / "commands"
        return path.read_text().split() if path.exists() else []


def target(behaviour: str = "ok") -> JoinTarget:
    return JoinTarget(url=f"ws://fake/{behaviour}", expected_pool_id=POOL_ID, pool_name="Lab pool", invite=None)


def serving(s: AgentStatus) -> bool:
    return s.activity is Activity.SERVING


async def test_join_serves_and_remembers_the_pool(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        assert h.status.activity is Activity.IDLE
        h.agent.handle(Join(target()))
        status = await h.until(serving)
        assert status.layers == (LayerSpan(0, 6, 6),)
        assert status.pool is not None and status.pool.name == "Lab pool"
        assert status.machine is not None and status.machine.cpu_model == "Fake CPU"
        status = await h.until(lambda s: s.steps_served > 20 and s.tokens_per_s > 0 and len(s.throughput) >= 3)
        assert [p.pool_id for p in load_settings(h.settings_path).pools] == [POOL_ID]


async def test_pause_stops_at_once_and_resume_comes_back(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.agent.handle(Join(target()))
        await h.until(serving)
        h.agent.handle(Pause())
        status = await h.until(lambda s: s.activity is Activity.PAUSED and not s.layers)
        assert status.detail == "Paused until you resume"
        assert h.commands() == ["stop"]
        h.agent.handle(Resume())
        await h.until(serving)


async def test_snooze_ends_by_itself(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.agent.handle(Join(target()))
        await h.until(serving)
        h.agent.handle(Snooze("30m"))
        status = await h.until(lambda s: s.activity is Activity.PAUSED)
        assert status.paused_until == h.clock.now + timedelta(minutes=30)
        assert status.detail == "Snoozed until 10:30"
        h.clock.advance(31 * 60)
        await h.until(serving)
        assert h.status.paused_until is None


async def test_finish_then_pause_drains_first(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.agent.handle(Join(target()))
        await h.until(serving)
        h.agent.handle(FinishThenPause())
        assert h.status.activity is Activity.FINISHING
        await h.until(lambda s: s.activity is Activity.PAUSED)
        assert h.commands() == ["drain"]


async def test_battery_drains_after_the_hysteresis_and_mains_brings_it_back(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.agent.handle(Join(target()))
        await h.until(serving)
        h.backend.battery = True
        await asyncio.sleep(0.2)
        assert serving(h.status), "one reading on battery must not stop compute"
        h.clock.advance(max(MIN_DWELL_S, BATTERY_CONFIRM_S) + 1)
        status = await h.until(lambda s: s.activity is Activity.WAITING)
        assert status.detail == "On battery"
        assert h.commands() == ["drain"]
        h.backend.battery = False
        await asyncio.sleep(0.2)
        h.clock.advance(max(MIN_DWELL_S, BATTERY_CONFIRM_S) + 1)
        await h.until(serving)


async def test_a_refusal_needs_the_user_and_a_crash_is_retried(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.agent.handle(Join(target("refuse")))
        status = await h.until(lambda s: s.activity is Activity.ERROR)
        assert "another key" in status.error and "do not join it" in status.error
        await asyncio.sleep(0.3)
        assert h.status.activity is Activity.ERROR, "a refusal is not retried by itself"
        h.agent.handle(Join(target("crash")))
        await h.until(lambda s: s.activity is Activity.DISCONNECTED)
        await h.until(lambda s: sum("compute process stopped" in line for line in s.log) >= 2, timeout=10)


async def test_leave_forgets_the_pool(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.agent.handle(Join(target()))
        await h.until(serving)
        h.agent.handle(Leave())
        await h.until(lambda s: s.activity is Activity.IDLE and s.pool is None)
        await asyncio.sleep(0.2)
        assert h.commands() == ["drain"]
        assert load_settings(h.settings_path).pools == ()


async def test_settings_are_saved_and_start_at_login_is_applied(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        new = Settings(cpu_threads=2, memory_cap_gib=3.5, only_when_idle=True, idle_minutes=7, start_at_login=True)
        h.agent.handle(ApplySettings(new))
        assert load_settings(h.settings_path) == new
        assert h.backend.autostart == [True]
        assert h.agent.settings == new


async def test_the_user_being_busy_holds_compute_back_when_only_idle(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings=Settings(only_when_idle=True, idle_minutes=5))
    h.backend.idle = 10.0
    async with h:
        h.agent.handle(Join(target()))
        status = await h.until(lambda s: s.activity is Activity.WAITING)
        assert status.detail == "Waiting until idle for 5 min"
        assert h.commands() == []


FAKE_COORDINATOR = """
import signal, sys, time
print("Pool 'Mine' (bf1aaaaaaaaaaaaaaaaaaaaaaaaaa) serving tiny")
print("  clients:    http://127.0.0.1:1234  (butterfly generate ...)")
print("  volunteers: ws://127.0.0.1:1234/ws")
print("  invite:     bfinv1.x.y", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(60)
"""


async def test_hosting_starts_reports_its_invite_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.agent as agent_module
    from app.commands import StartHosting, StopHosting
    from app.hosting import HostedCoordinator, HostRequest
    from app.status import HostingPhase

    class FakeHosted(HostedCoordinator):
        def __init__(self, request: HostRequest) -> None:
            super().__init__(request, argv=[sys.executable, "-c", FAKE_COORDINATOR])

    monkeypatch.setattr(agent_module, "HostedCoordinator", FakeHosted)
    async with Harness(tmp_path) as h:
        h.agent.handle(StartHosting(HostRequest(pool_name="Mine")))
        assert h.status.hosting is not None and h.status.hosting.phase is HostingPhase.STARTING
        status = await h.until(lambda s: s.hosting is not None and s.hosting.phase is HostingPhase.RUNNING)
        assert status.hosting is not None
        assert (status.hosting.url, status.hosting.invite, status.hosting.pool_id) == ("http://127.0.0.1:1234", "bfinv1.x.y", "bf1" + "a" * 26)
        h.agent.handle(StartHosting(HostRequest(pool_name="Second")))
        assert h.status.activity is Activity.IDLE and "already hosts a pool" in h.status.log[-1]
        h.agent.handle(StopHosting())
        await h.until(lambda s: s.hosting is None)
