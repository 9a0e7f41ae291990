"""The tray menu is a pure function of the status snapshot (no Qt needed)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from app.commands import FinishThenPause, Join, JoinTarget, Leave, Pause, Resume, Snooze, StopHosting
from app.discovery import DiscoveredPool
from app.status import Activity, AgentStatus, Hosting, HostingPhase, LayerSpan, PoolRef
from app.ui.menu_model import (
    AskHost,
    AskInvite,
    ConfirmJoin,
    CopyInvite,
    IconState,
    OpenMap,
    Quit,
    ShowInvite,
    ShowSettings,
    ShowStatus,
    build_menu_model,
    icon_state,
    tooltip_text,
)
from core.discovery import PoolAdvert
from core.identity import Identity
from core.protocol.version import PROTOCOL_VERSION
from core.types import PoolId

ROOT = Path(__file__).resolve().parents[3]
IDS = [PoolId(Identity.generate().fingerprint) for _ in range(4)]


def discovered(name: str, pool_id: str, *, invite: bool = False, protocol: int = PROTOCOL_VERSION, volunteers: int = 2) -> DiscoveredPool:
    advert = PoolAdvert(pool_id=PoolId(pool_id), pool_name=name, model="SmolLM2", invite_required=invite,
                        protocol_version=protocol, volunteers=volunteers, layers=30, model_mib=514, needed_mib=100)
    return DiscoveredPool(f"{name}._butterfly._tcp.local.", advert, "10.0.0.2", 8765)


LAB = PoolRef(IDS[0], "Lab", "ws://10.0.0.2:8765/ws", "SmolLM2")


def test_the_menu_model_imports_neither_qt_nor_torch() -> None:
    code = "import sys, app.ui.menu_model; print(sorted({'PySide6', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_idle_menu() -> None:
    model = build_menu_model(AgentStatus(detail="Not in a pool"))
    assert model.find("Butterfly — Not in a pool").enabled is False
    assert model.find("    None found yet").enabled is False
    assert model.find("Join with invite").action == AskInvite()
    for label in ("Pause", "Snooze", "Finish current work", "Leave pool", "Open cluster map"):
        assert not model.find(label).enabled, label
    assert model.actions() == [AskInvite(), Snooze("30m"), Snooze("1h"), Snooze("tomorrow"), AskHost(), ShowStatus(), ShowSettings(), Quit()]


def test_discovered_pools_open_consent_unless_they_cannot_be_joined() -> None:
    open_pool = discovered("Open", IDS[1])
    status = AgentStatus(
        discovered=(open_pool, discovered("Private", IDS[2], invite=True), discovered("Future", IDS[3], protocol=PROTOCOL_VERSION + 1)),
    )
    model = build_menu_model(status)
    join = model.find("Join Open — SmolLM2, 2 volunteers")
    assert join.action == ConfirmJoin(open_pool) and join.enabled
    assert "still needs 100 MiB" in join.tooltip and IDS[1] in join.tooltip
    assert not model.find("Private — SmolLM2, 2 volunteers (invite only)").enabled
    assert not model.find("Future").enabled and "version" in model.find("Future").label
    assert len(model.find("Pools on this network").label) > 0


def test_the_joined_pool_is_marked_and_the_pool_actions_apply() -> None:
    status = AgentStatus(activity=Activity.SERVING, detail="Serving layers 1–30 of 30 for Lab", pool=LAB,
                         discovered=(discovered("Lab", IDS[0], volunteers=1),), layers=(LayerSpan(0, 30, 30),))
    model = build_menu_model(status)
    assert model.find("✓ Lab").enabled is False
    assert model.find("Pause").action == Pause()
    assert [c.action for c in model.find("Snooze").children] == [Snooze("30m"), Snooze("1h"), Snooze("tomorrow")]
    assert model.find("Finish current work").action == FinishThenPause()
    assert model.find("Leave “Lab”").action == Leave()
    assert model.find("Open cluster map").action == OpenMap("http://10.0.0.2:8765/")


@pytest.mark.parametrize("activity", [Activity.PAUSED, Activity.ERROR])
def test_paused_or_failed_offers_resume(activity: Activity) -> None:
    model = build_menu_model(AgentStatus(activity=activity, pool=LAB, paused_until=datetime(2025, 1, 1, 12, 0)))
    assert model.find("Resume").action == Resume()
    assert not model.find("Finish current work").enabled
    with pytest.raises(KeyError, match="Pause"):
        model.find("Pause")


def test_hosting_submenus() -> None:
    starting = build_menu_model(AgentStatus(hosting=Hosting(HostingPhase.STARTING, "Mine", "default")))
    assert [c.action for c in starting.find("Hosting “Mine” (starting…)").children] == [StopHosting()]
    hosting = Hosting(HostingPhase.RUNNING, "Mine", "default", url="http://127.0.0.1:8765", ws_url="ws://127.0.0.1:8765/ws",
                      invite="bfinv1.x.y", pool_id=IDS[1])
    running = build_menu_model(AgentStatus(pool=LAB, hosting=hosting))
    own = JoinTarget(url="ws://127.0.0.1:8765/ws", expected_pool_id=IDS[1], pool_name="Mine", invite="bfinv1.x.y", model="default")
    assert [c.action for c in running.find("Hosting “Mine”").children] == [ShowInvite(), CopyInvite(), Join(own), StopHosting()]
    assert running.find("Open cluster map").action == OpenMap("http://127.0.0.1:8765/")
    mine = PoolRef(IDS[1], "Mine", "ws://127.0.0.1:8765/ws")
    in_own_pool = build_menu_model(AgentStatus(pool=mine, hosting=hosting))
    assert [c.action for c in in_own_pool.find("Hosting “Mine”").children] == [ShowInvite(), CopyInvite(), StopHosting()]
    failed = build_menu_model(AgentStatus(hosting=Hosting(HostingPhase.FAILED, "Mine", "default", error="port in use")))
    item = failed.find("Hosting “Mine” failed")
    assert item.children[0].label == "port in use" and item.children[2].action == AskHost()


def test_a_discovery_problem_is_shown_where_pools_would_be() -> None:
    model = build_menu_model(AgentStatus(discovery_note="cannot look for pools on this network: no multicast"))
    assert model.find("    cannot look for pools").enabled is False


@pytest.mark.parametrize(
    ("activity", "state"),
    [
        (Activity.IDLE, IconState.IDLE),
        (Activity.STARTING, IconState.WORKING),
        (Activity.CONNECTING, IconState.WORKING),
        (Activity.LOADING, IconState.WORKING),
        (Activity.SERVING, IconState.WORKING),
        (Activity.FINISHING, IconState.WORKING),
        (Activity.WAITING, IconState.PAUSED),
        (Activity.PAUSED, IconState.PAUSED),
        (Activity.DISCONNECTED, IconState.DISCONNECTED),
        (Activity.ERROR, IconState.ERROR),
    ],
)
def test_icon_states(activity: Activity, state: IconState) -> None:
    assert icon_state(AgentStatus(activity=activity)) is state


def test_tooltip_shows_the_rate_while_serving() -> None:
    text = tooltip_text(AgentStatus(activity=Activity.SERVING, detail="Serving layers 1–6 of 6", tokens_per_s=12.34, steps_served=99))
    assert text.splitlines() == ["Butterfly — Serving", "Serving layers 1–6 of 6", "12.3 tokens/s · 99 steps served"]
    assert tooltip_text(AgentStatus(detail="Not in a pool")).splitlines() == ["Butterfly — Not in a pool", "Not in a pool"]
