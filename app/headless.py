"""The desktop agent without a desktop: ``butterfly app --headless``.

Runs the same :class:`~app.agent.Agent` as the tray, prints one line whenever what it
does changes, and leaves politely on Ctrl-C (a second Ctrl-C quits at once).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from app.agent import Agent, AgentConfig
from app.commands import Join, JoinTarget, Shutdown
from app.status import AgentStatus


def status_line(status: AgentStatus) -> str:
    """One line for a terminal: what the agent does, and the pool sizes around it."""
    line = f"[{status.activity.value}] {status.detail}"
    if status.discovered:
        line += f"  ({len(status.discovered)} pool(s) on this network)"
    return line


async def run_headless(config: AgentConfig, *, join: JoinTarget | None = None, out: TextIO = sys.stdout) -> int:
    """Run the agent until Ctrl-C (or SIGTERM); 0 when it shut down cleanly."""
    last = ""

    def on_status(status: AgentStatus) -> None:
        nonlocal last
        line = status_line(status)
        if line != last:
            last = line
            _say(line, out)

    agent = Agent(config, on_status=on_status)
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            agent.handle(Shutdown())
            _say("leaving (Ctrl-C again to quit at once)…", sys.stderr)
        else:
            raise SystemExit(130)

    _on_interrupt(on_interrupt)
    runner = asyncio.create_task(agent.run())
    if join is not None:
        await asyncio.sleep(0)
        agent.handle(Join(join))
    await runner
    return 0


def _say(text: str, stream: TextIO) -> None:
    """Print a line; a closed terminal or pipe must not stop the agent."""
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        pass


def _on_interrupt(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(callback))
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(callback))
