"""``butterfly app``: the desktop app (tray), or the same agent without a UI (``--headless``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from core.errors import ConfigError


def add_app_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``butterfly app``."""
    p.add_argument("--headless", action="store_true", help="run the agent without a window or tray icon")
    p.add_argument("--invite", help="join the pool this invite (or butterfly:// link) names at start")
    p.add_argument("--name", default="", help="the name pools show for this machine")
    p.add_argument("--data-dir", type=Path, help="where this install's key lives")
    p.add_argument("--settings", type=Path, help="the settings file (default: the user's config folder)")
    p.add_argument("--no-discovery", action="store_true", help="do not look for pools on the local network")
    p.add_argument("--mdns-interface", action="append", default=[], metavar="IP",
                   help="look for pools on the interface with this IPv4 address (repeatable; default: all)")


def run_app(args: argparse.Namespace) -> int:
    """Start the tray app, or the headless agent with ``--headless``."""
    from app.agent import AgentConfig, default_agent_data_dir
    from app.commands import read_invite

    config = AgentConfig(
        data_dir=args.data_dir or default_agent_data_dir(),
        settings_path=args.settings,
        name=args.name,
        discovery=not args.no_discovery,
        mdns_interfaces=tuple(args.mdns_interface),
    )
    join = read_invite(args.invite, now=time.time())[0] if args.invite else None
    if args.headless:
        from app.headless import run_headless

        return asyncio.run(run_headless(config, join=join))
    check_desktop(os.environ, sys.platform)
    try:
        from app.ui.main import run_tray
    except ImportError as exc:
        raise ConfigError(f"the desktop app cannot load Qt: {exc}", hint="install pyside6-essentials, or run `butterfly app --headless`") from None
    return run_tray(config, join=join)


def check_desktop(env: Mapping[str, str], platform: str) -> None:
    """Raise :class:`ConfigError` when a Linux session has no display to show the tray on (Qt would abort)."""
    if platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or env.get("QT_QPA_PLATFORM")):
        raise ConfigError("no desktop session was found (neither DISPLAY nor WAYLAND_DISPLAY is set)",
                          hint="run `butterfly app --headless` on a server")
