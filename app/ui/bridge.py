"""The agent on its own thread, seen from Qt: commands go in, status snapshots come out as a signal.

:class:`AgentBridge` runs :class:`app.agent.Agent` on an asyncio loop in a daemon
thread. The GUI thread never waits for the agent: :meth:`AgentBridge.send` hands a
command over and returns, and each new :class:`~app.status.AgentStatus` arrives through
the queued :attr:`AgentBridge.status_changed` signal, which Qt delivers on the GUI
thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from app.agent import Agent, AgentConfig
from app.commands import Command, Shutdown
from app.settings import Settings
from app.status import AgentStatus

log = logging.getLogger(__name__)

AgentFactory = Callable[[AgentConfig, Callable[[AgentStatus], None]], Agent]


def _default_factory(config: AgentConfig, on_status: Callable[[AgentStatus], None]) -> Agent:
    return Agent(config, on_status=on_status)


class AgentBridge(QObject):
    """Owns the agent's thread. ``status_changed(AgentStatus)`` fires on the GUI thread; ``stopped()`` once it ended."""

    status_changed = Signal(object)
    stopped = Signal()

    def __init__(self, config: AgentConfig, *, factory: AgentFactory = _default_factory, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config
        self._factory = factory
        self._agent: Agent | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest = AgentStatus()
        self.status_changed.connect(self._remember)

    def start(self) -> None:
        """Start the agent's thread; returns at once."""
        self._thread = threading.Thread(target=self._run, name="butterfly-agent", daemon=True)
        self._thread.start()

    def send(self, command: Command) -> None:
        """Hand ``command`` to the agent; never blocks (waits at most for the agent to be created)."""
        self._ready.wait(5.0)
        if self._agent is not None:
            self._agent.submit(command)

    def settings(self) -> Settings:
        """The agent's current settings (an immutable value)."""
        self._ready.wait(5.0)
        return self._agent.settings if self._agent is not None else Settings()

    def shutdown(self) -> None:
        """Ask the agent to leave politely and stop; :attr:`stopped` fires when it has."""
        if self._thread is None or not self._thread.is_alive():
            self.stopped.emit()
            return
        self.send(Shutdown())

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the agent's thread to end; whether it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _remember(self, status: AgentStatus) -> None:
        self.latest = status

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # noqa: BLE001 - reported, and the GUI is told the agent stopped
            log.exception("the agent stopped with an error")
        finally:
            self._ready.set()
            self.stopped.emit()

    async def _main(self) -> None:
        self._agent = self._factory(self.config, self.status_changed.emit)
        self._ready.set()
        await self._agent.run()
