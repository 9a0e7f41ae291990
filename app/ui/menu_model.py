"""The tray menu as data: :func:`build_menu_model` maps one status snapshot to the whole menu.

Nothing here imports Qt. The tray (and the window shown when there is no tray) turns a
:class:`MenuModel` into widgets and sends each item's action back; the menu is rebuilt
from every new :class:`~app.status.AgentStatus`, so it can never disagree with it.
Actions are either agent commands (:mod:`app.commands`) or the UI intents below, which
open a dialog or a window first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.commands import Command, FinishThenPause, Join, JoinTarget, Leave, Pause, Resume, Snooze, StopHosting
from app.discovery import DiscoveredPool
from app.status import Activity, AgentStatus, HostingPhase, format_bytes


@dataclass(frozen=True, slots=True)
class ConfirmJoin:
    """Ask the user to consent to joining ``pool`` (found on the network)."""

    pool: DiscoveredPool


@dataclass(frozen=True, slots=True)
class AskInvite:
    """Ask for an invite token or link to join with."""


@dataclass(frozen=True, slots=True)
class AskHost:
    """Ask what pool to host."""


@dataclass(frozen=True, slots=True)
class ShowInvite:
    """Show the hosted pool's invite, ready to copy."""


@dataclass(frozen=True, slots=True)
class CopyInvite:
    """Put the hosted pool's invite on the clipboard."""


@dataclass(frozen=True, slots=True)
class OpenMap:
    """Open the cluster map at ``url`` in the browser."""

    url: str


@dataclass(frozen=True, slots=True)
class ShowStatus:
    """Open the status window."""


@dataclass(frozen=True, slots=True)
class ShowSettings:
    """Open the settings dialog."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave politely and quit the app."""


UiIntent = ConfirmJoin | AskInvite | AskHost | ShowInvite | CopyInvite | OpenMap | ShowStatus | ShowSettings | Quit
MenuAction = Command | UiIntent


@dataclass(frozen=True, slots=True)
class MenuItem:
    """One entry: a label with an action, a submenu (``children``), or a separator.

    Items without an action and without children are information lines, shown disabled.
    """

    label: str = ""
    action: MenuAction | None = None
    enabled: bool = True
    children: tuple[MenuItem, ...] = ()
    separator: bool = False
    tooltip: str = ""


SEPARATOR = MenuItem(separator=True)


@dataclass(frozen=True, slots=True)
class MenuModel:
    """The whole tray menu, top to bottom."""

    items: tuple[MenuItem, ...]

    def find(self, *labels: str) -> MenuItem:
        """The item reached by following ``labels`` (each a prefix of an item's label) into submenus.

        Raises KeyError naming the label that matched nothing.
        """
        items = self.items
        found: MenuItem | None = None
        for label in labels:
            found = next((i for i in items if not i.separator and i.label.startswith(label)), None)
            if found is None:
                raise KeyError(f"no menu item starting with {label!r} among {[i.label for i in items if i.label]}")
            items = found.children
        assert found is not None
        return found

    def actions(self) -> list[MenuAction]:
        """Every enabled action in the menu, depth first (for tests and the fallback window)."""
        out: list[MenuAction] = []

        def walk(items: tuple[MenuItem, ...]) -> None:
            for item in items:
                if item.action is not None and item.enabled:
                    out.append(item.action)
                walk(item.children)

        walk(self.items)
        return out


class IconState(StrEnum):
    """The tray icon's look."""

    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    ERROR = "error"
    DISCONNECTED = "disconnected"


_ICON_STATES = {
    Activity.IDLE: IconState.IDLE,
    Activity.STARTING: IconState.WORKING,
    Activity.CONNECTING: IconState.WORKING,
    Activity.LOADING: IconState.WORKING,
    Activity.SERVING: IconState.WORKING,
    Activity.FINISHING: IconState.WORKING,
    Activity.WAITING: IconState.PAUSED,
    Activity.PAUSED: IconState.PAUSED,
    Activity.DISCONNECTED: IconState.DISCONNECTED,
    Activity.ERROR: IconState.ERROR,
}

_HEADLINES = {
    Activity.IDLE: "Not in a pool",
    Activity.STARTING: "Starting",
    Activity.CONNECTING: "Connecting",
    Activity.LOADING: "Loading layers",
    Activity.SERVING: "Serving",
    Activity.WAITING: "Waiting",
    Activity.PAUSED: "Paused",
    Activity.FINISHING: "Finishing",
    Activity.DISCONNECTED: "Disconnected",
    Activity.ERROR: "Needs attention",
}


def icon_state(status: AgentStatus) -> IconState:
    """Which icon the tray shows for ``status``."""
    return _ICON_STATES[status.activity]


def headline(status: AgentStatus) -> str:
    """A word or two for the activity, e.g. ``"Serving"``."""
    return _HEADLINES[status.activity]


def tooltip_text(status: AgentStatus) -> str:
    """The tray tooltip: the activity, the detail, and the rate while serving."""
    lines = [f"Butterfly — {headline(status)}", status.detail]
    if status.activity is Activity.SERVING or status.tokens_per_s > 0:
        lines.append(f"{status.tokens_per_s:.1f} tokens/s · {status.steps_served} steps served")
    if status.hosting is not None and status.hosting.phase is HostingPhase.RUNNING:
        lines.append(f"Hosting {status.hosting.pool_name}")
    return "\n".join(line for line in lines if line)


def pool_label(pool: DiscoveredPool) -> str:
    """A discovered pool as a menu line: name, model and how many volunteers it has."""
    a = pool.advert
    count = f"{a.volunteers} volunteer" + ("" if a.volunteers == 1 else "s")
    return f"{a.pool_name} — {a.model}, {count}"


def pool_tooltip(pool: DiscoveredPool) -> str:
    """What the pool says about itself, for the item's tooltip."""
    a = pool.advert
    parts = [f"Pool id {a.pool_id}", f"at {pool.host}:{pool.port}"]
    if a.layers:
        parts.append(f"{a.layers} layers")
    if a.model_mib:
        parts.append(f"{format_bytes(a.model_mib << 20)} of weights")
    if a.needed_mib:
        parts.append(f"still needs {format_bytes(a.needed_mib << 20)} of memory")
    if a.invite_required:
        parts.append("needs an invite")
    return "; ".join(parts)


def build_menu_model(status: AgentStatus) -> MenuModel:
    """The tray menu for ``status``; pure.

    Layout: a status header and detail; pools on the network (each opens the consent
    dialog; the joined one is marked, pools needing an invite or a newer app are
    disabled with the reason); join with an invite; pause / resume, snooze, finish then
    pause and leave (only while in a pool); host a pool or the hosted pool's submenu;
    the cluster map; status; settings; quit.
    """
    items: list[MenuItem] = [MenuItem(f"Butterfly — {headline(status)}", enabled=False)]
    if status.detail:
        items.append(MenuItem(_clip(status.detail, 70), enabled=False))
    items.append(SEPARATOR)

    items.append(MenuItem("Pools on this network", enabled=False))
    joined_id = status.pool.pool_id if status.pool is not None else None
    for pool in status.discovered:
        items.append(_discovered_item(pool, joined=pool.pool_id == joined_id))
    if not status.discovered:
        note = status.discovery_note or "None found yet"
        items.append(MenuItem(f"    {_clip(note, 60)}", enabled=False))
    items.append(MenuItem("Join with invite…", AskInvite()))
    items.append(SEPARATOR)

    in_pool = status.pool is not None
    paused = status.activity is Activity.PAUSED
    if paused or status.activity is Activity.ERROR:
        items.append(MenuItem("Resume", Resume(), enabled=in_pool))
    else:
        items.append(MenuItem("Pause", Pause(), enabled=in_pool))
    items.append(
        MenuItem(
            "Snooze",
            enabled=in_pool,
            children=(
                MenuItem("For 30 minutes", Snooze("30m")),
                MenuItem("For 1 hour", Snooze("1h")),
                MenuItem("Until tomorrow morning", Snooze("tomorrow")),
            ),
        )
    )
    can_finish = in_pool and status.activity in (Activity.SERVING, Activity.LOADING, Activity.CONNECTING, Activity.STARTING)
    items.append(MenuItem("Finish current work, then pause", FinishThenPause(), enabled=can_finish))
    leave_label = f"Leave “{_clip(status.pool.name, 30)}”" if status.pool is not None and status.pool.name else "Leave pool"
    items.append(MenuItem(leave_label, Leave(), enabled=in_pool))
    items.append(SEPARATOR)

    items.append(_hosting_item(status))
    map_url = _map_url(status)
    items.append(MenuItem("Open cluster map", OpenMap(map_url) if map_url else None, enabled=bool(map_url)))
    items.append(SEPARATOR)
    items.append(MenuItem("Status…", ShowStatus()))
    items.append(MenuItem("Settings…", ShowSettings()))
    items.append(SEPARATOR)
    items.append(MenuItem("Quit Butterfly", Quit()))
    return MenuModel(tuple(items))


def _discovered_item(pool: DiscoveredPool, *, joined: bool) -> MenuItem:
    label = pool_label(pool)
    if joined:
        return MenuItem(f"✓ {label}", enabled=False, tooltip="This machine is in this pool")
    if not pool.advert.compatible:
        return MenuItem(f"{label} (needs another Butterfly version)", enabled=False, tooltip=pool_tooltip(pool))
    if pool.advert.invite_required:
        return MenuItem(f"{label} (invite only)", enabled=False, tooltip=pool_tooltip(pool) + " — use Join with invite…")
    return MenuItem(f"Join {label}", ConfirmJoin(pool), tooltip=pool_tooltip(pool))


def _hosting_item(status: AgentStatus) -> MenuItem:
    hosting = status.hosting
    if hosting is None:
        return MenuItem("Host a pool…", AskHost())
    if hosting.phase is HostingPhase.STARTING:
        return MenuItem(f"Hosting “{_clip(hosting.pool_name, 30)}” (starting…)", children=(MenuItem("Stop hosting", StopHosting()),))
    if hosting.phase is HostingPhase.FAILED:
        return MenuItem(
            f"Hosting “{_clip(hosting.pool_name, 30)}” failed",
            children=(MenuItem(_clip(hosting.error, 70), enabled=False), MenuItem("Dismiss", StopHosting()), MenuItem("Host a pool…", AskHost())),
        )
    children = [MenuItem("Show invite…", ShowInvite()), MenuItem("Copy invite", CopyInvite())]
    joined = status.pool is not None and status.pool.pool_id == hosting.pool_id
    if hosting.ws_url and hosting.pool_id and hosting.invite and not joined:
        own = JoinTarget(url=hosting.ws_url, expected_pool_id=hosting.pool_id, pool_name=hosting.pool_name,
                         invite=hosting.invite, model=hosting.model)
        children.append(MenuItem("Lend this machine to it too", Join(own)))
    children.append(MenuItem("Stop hosting", StopHosting()))
    return MenuItem(f"Hosting “{_clip(hosting.pool_name, 30)}”", children=tuple(children))


def _map_url(status: AgentStatus) -> str:
    if status.hosting is not None and status.hosting.phase is HostingPhase.RUNNING and status.hosting.url:
        return status.hosting.url.rstrip("/") + "/"
    if status.pool is not None:
        return status.pool.http_url
    return ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
