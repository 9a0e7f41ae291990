"""Pools on the local network: a browser that turns mDNS answers into events, and a pure fold.

:class:`PoolBrowser` watches the DNS-SD service type of pools and reports each change as
one :class:`PoolFound`, :class:`PoolUpdated` or :class:`PoolLost` event; the app keeps
what it knows as :class:`DiscoveredPools`, updated only by :func:`apply`. The TXT record
of a pool comes from anyone on the network: it is checked by
:func:`core.discovery.decode_txt`, and a bad one is dropped and logged once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from core.discovery import SERVICE_TYPE, PoolAdvert, decode_txt
from core.errors import ProtocolViolation
from core.types import PoolId

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS: Final = 3000
"""Milliseconds to wait for a service's address and TXT record."""

MAX_WARNED: Final = 256
"""Distinct bad records remembered so each is logged once."""


@dataclass(frozen=True, slots=True)
class DiscoveredPool:
    """A pool seen on the network: its advert, and the address and port of its volunteer websocket."""

    service: str
    advert: PoolAdvert
    host: str
    port: int

    @property
    def pool_id(self) -> PoolId:
        """The advertised pool id (the fingerprint the app pins on join)."""
        return self.advert.pool_id

    @property
    def name(self) -> str:
        """The pool's name, for people."""
        return self.advert.pool_name

    @property
    def ws_url(self) -> str:
        """The websocket a volunteer dials, e.g. ``wss://192.168.1.20:8765/ws`` (``ws://`` for a development pool)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self.advert.tls else "ws"
        return f"{scheme}://{host}:{self.port}{self.advert.ws_path}"


@dataclass(frozen=True, slots=True)
class PoolFound:
    """A pool appeared."""

    pool: DiscoveredPool


@dataclass(frozen=True, slots=True)
class PoolUpdated:
    """A pool's advert or address changed."""

    pool: DiscoveredPool


@dataclass(frozen=True, slots=True)
class PoolLost:
    """The pool advertised under ``service`` left (or its record went bad)."""

    service: str


PoolEvent = PoolFound | PoolUpdated | PoolLost


@dataclass(frozen=True, slots=True)
class DiscoveredPools:
    """The pools seen now, sorted by name then pool id; each pool id appears once."""

    pools: tuple[DiscoveredPool, ...] = ()

    def by_pool_id(self, pool_id: str) -> DiscoveredPool | None:
        """The pool with this id, or None."""
        return next((p for p in self.pools if p.pool_id == pool_id), None)


def apply(state: DiscoveredPools, event: PoolEvent) -> DiscoveredPools:
    """The pools after ``event``: found and updated pools are upserted, lost ones removed.

    An advert for a pool id already listed under another service name replaces that
    entry (a pool that renamed itself is still one pool). Losing an unknown service
    changes nothing.
    """
    if isinstance(event, PoolLost):
        kept = tuple(p for p in state.pools if p.service != event.service)
        return state if len(kept) == len(state.pools) else replace(state, pools=kept)
    pool = event.pool
    others = [p for p in state.pools if p.service != pool.service and p.pool_id != pool.pool_id]
    others.append(pool)
    others.sort(key=lambda p: (p.name.casefold(), p.pool_id, p.service))
    return replace(state, pools=tuple(others))


def pick_address(addresses: Sequence[str]) -> str | None:
    """The address to dial among a service's: routable IPv4 first, then loopback, then IPv6."""
    parsed = []
    for text in addresses:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            continue

    def rank(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        if addr.version == 4 and not addr.is_loopback and not addr.is_link_local:
            return 0
        if addr.version == 4 and addr.is_loopback:
            return 1
        return 2 if not addr.is_link_local else 3

    if not parsed:
        return None
    return str(min(parsed, key=rank))


def pool_from_service(service: str, properties: Any, addresses: Sequence[str], port: int | None) -> DiscoveredPool:
    """A :class:`DiscoveredPool` from a resolved service; raises :class:`ProtocolViolation` when unusable."""
    advert = decode_txt(properties or {})
    host = pick_address(addresses)
    if host is None:
        raise ProtocolViolation("the service has no usable address")
    if port is None or not 0 < port < 65536:
        raise ProtocolViolation(f"the service's port {port!r} is not valid")
    return DiscoveredPool(service=service, advert=advert, host=host, port=port)


class PoolBrowser:
    """Browses the local network for pools and reports :data:`PoolEvent` values to ``on_event``.

    Runs on the asyncio loop that calls :meth:`start`; ``on_event`` is called on that
    loop. ``interfaces`` lists the IPv4 addresses of the interfaces to browse on (empty:
    all). A record that fails validation is dropped and logged once per service and
    problem.
    """

    def __init__(self, on_event: Callable[[PoolEvent], None], *, interfaces: Sequence[str] = ()) -> None:
        self._on_event = on_event
        self._interfaces = list(interfaces)
        self._zeroconf: Any = None
        self._browser: Any = None
        self._known: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start browsing; raises OSError (or zeroconf's errors) when no interface can take multicast."""
        from zeroconf import InterfaceChoice
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._zeroconf = AsyncZeroconf(interfaces=self._interfaces or InterfaceChoice.All)
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])

    async def stop(self) -> None:
        """Stop browsing and close the sockets; never raises."""
        for task in list(self._tasks):
            task.cancel()
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            if self._zeroconf is not None:
                await self._zeroconf.async_close()
        except Exception as exc:  # noqa: BLE001 - shutting down
            log.debug("closing the mDNS browser failed: %s", exc)
        self._browser = self._zeroconf = None

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            if name in self._known:
                self._known.discard(name)
                self._on_event(PoolLost(name))
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if self._zeroconf is None or not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            self._warn_once(name, "it did not answer with its address and record")
            return
        try:
            pool = pool_from_service(name, info.properties, info.parsed_addresses(), info.port)
        except ProtocolViolation as exc:
            self._warn_once(name, exc.message)
            if name in self._known:
                self._known.discard(name)
                self._on_event(PoolLost(name))
            return
        event: PoolEvent = PoolUpdated(pool) if name in self._known else PoolFound(pool)
        self._known.add(name)
        self._on_event(event)

    def _warn_once(self, name: str, problem: str) -> None:
        key = (name, problem)
        if key in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned.add(key)
        log.warning("ignoring the pool advertised as %r: %s", name, problem)
