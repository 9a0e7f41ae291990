"""The coordinator's mDNS advert: the pool announces itself on the local network.

:class:`PoolAdvertiser` registers one DNS-SD service (:data:`core.discovery.SERVICE_TYPE`)
whose TXT record is the pool's :class:`~core.discovery.PoolAdvert`, re-publishes it
when the pool changes (volunteers join or leave, so the memory it still needs
changes) and unregisters it on stop, which tells browsers at once that the pool left.
Registering takes a couple of seconds (mDNS probes the name first); it runs in the
background and never delays or fails the coordinator: a network that refuses
multicast costs a warning, not the pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from core.discovery import (
    MAX_MODEL_CHARS,
    MAX_POOL_NAME_CHARS,
    SERVICE_TYPE,
    PoolAdvert,
    clip_text,
    encode_txt,
    service_name,
)
from core.types import PoolId

if TYPE_CHECKING:
    from server.coordinator import Coordinator

log = logging.getLogger(__name__)

REFRESH_S: Final = 2.0
"""Seconds between checks whether the advert changed."""

STOP_TIMEOUT_S: Final = 3.0
"""Seconds the goodbye packets and shutdown of the responder may take."""

_MIB = 1 << 20
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def build_advert(
    *,
    pool_id: str,
    pool_name: str,
    model_name: str,
    open_pool: bool,
    layers: int,
    model_bytes: int,
    volunteer_memory: Sequence[int],
    ws_path: str = "/ws",
    tls: bool = True,
) -> PoolAdvert:
    """The advert for a pool in this state; names are clipped to what a TXT record carries.

    ``volunteer_memory`` holds the memory (bytes) each connected volunteer offers; the
    pool still needs whatever the model's weights exceed their sum by.
    """
    offered = sum(max(0, m) for m in volunteer_memory)
    return PoolAdvert(
        pool_id=PoolId(pool_id),
        pool_name=clip_text(pool_name, MAX_POOL_NAME_CHARS) or "Butterfly pool",
        model=clip_text(model_name, MAX_MODEL_CHARS) or "unknown model",
        invite_required=not open_pool,
        ws_path=ws_path,
        volunteers=len(volunteer_memory),
        layers=max(0, layers),
        model_mib=-(-max(0, model_bytes) // _MIB),
        needed_mib=-(-max(0, model_bytes - offered) // _MIB),
        tls=tls,
    )


def coordinator_advert(coordinator: Coordinator) -> PoolAdvert:
    """The advert describing ``coordinator``'s pool as it is now."""
    snapshot: Mapping[str, Any] = coordinator.pool.snapshot()
    volunteers = snapshot.get("volunteers") or []
    manifest = coordinator.model.manifest
    return build_advert(
        pool_id=coordinator.pool_id,
        pool_name=coordinator.config.pool_name,
        model_name=manifest.name,
        open_pool=coordinator.config.open_pool,
        layers=int(coordinator.model.config.num_layers),
        model_bytes=sum(entry.nbytes for entry in manifest.tensors.values()),
        volunteer_memory=[int(v.get("memory_bytes", 0)) for v in volunteers if not v.get("draining")],
        tls=not coordinator.config.insecure_loopback,
    )


def advert_addresses(host: str, interfaces: Sequence[str], available: Callable[[], list[str]] | None = None) -> list[str]:
    """The IPv4 addresses to advertise (and answer on) for a server bound to ``host``.

    Explicit ``interfaces`` win. A specific IPv4 ``host`` is advertised as itself
    (``localhost`` as 127.0.0.1). A wildcard host is advertised on every non-loopback
    IPv4 address ``available()`` lists (default: this machine's adapters), or on
    127.0.0.1 when there is none.
    """
    if interfaces:
        return list(dict.fromkeys(interfaces))
    if host == "localhost":
        return ["127.0.0.1"]
    if host not in _WILDCARDS:
        try:
            return [str(ipaddress.IPv4Address(host))]
        except ValueError:
            try:
                return [socket.gethostbyname(host)]
            except OSError:
                return ["127.0.0.1"]
    addresses = [a for a in (available or _adapter_addresses)() if not ipaddress.IPv4Address(a).is_loopback]
    return addresses or ["127.0.0.1"]


class PoolAdvertiser:
    """Keeps one pool's mDNS service registered while the coordinator runs.

    ``describe`` is called every ``refresh_s`` seconds; a changed advert is re-published.
    ``registered`` is set once the service is announced.
    """

    def __init__(
        self,
        *,
        describe: Callable[[], PoolAdvert],
        port: int,
        addresses: Sequence[str],
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._describe = describe
        self._port = port
        self._addresses = list(addresses)
        self._refresh_s = refresh_s
        self._zeroconf: Any = None
        self._info: Any = None
        self._task: asyncio.Task[None] | None = None
        self._failed_describe = False
        self.registered = asyncio.Event()

    async def start(self) -> None:
        """Begin advertising in the background; returns at once."""
        self._task = asyncio.create_task(self._run(), name="mdns-advert")

    async def stop(self) -> None:
        """Unregister the service (browsers see the pool leave) and close the responder; never raises."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        zc, info = self._zeroconf, self._info
        self._zeroconf = self._info = None
        if zc is None:
            return
        try:
            if info is not None and self.registered.is_set():
                await asyncio.wait_for(await zc.async_unregister_service(info), STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - shutting down; the advert expires by itself
            log.debug("mDNS unregister failed: %s", exc)
        try:
            await asyncio.wait_for(zc.async_close(), STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            log.debug("mDNS close failed: %s", exc)

    async def _run(self) -> None:
        from zeroconf.asyncio import AsyncZeroconf

        advert = self._safe_describe()
        if advert is None:
            return
        try:
            self._zeroconf = AsyncZeroconf(interfaces=self._addresses)
            self._info = self._service_info(advert)
            await (await self._zeroconf.async_register_service(self._info, allow_name_change=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a LAN without multicast must not stop the pool
            log.warning("could not advertise the pool on the local network (%s): %s", ", ".join(self._addresses), exc)
            return
        self.registered.set()
        log.info("advertising pool %r over mDNS on %s", advert.pool_name, ", ".join(self._addresses))
        while True:
            await asyncio.sleep(self._refresh_s)
            current = self._safe_describe()
            if current is None or current == advert:
                continue
            advert = current
            self._info = self._service_info(advert, name=self._info.name)
            try:
                await (await self._zeroconf.async_update_service(self._info))
            except Exception as exc:  # noqa: BLE001
                log.warning("could not update the pool's mDNS advert: %s", exc)

    def _safe_describe(self) -> PoolAdvert | None:
        try:
            return self._describe()
        except Exception:  # noqa: BLE001 - logged once; the last good advert stays up
            if not self._failed_describe:
                self._failed_describe = True
                log.exception("could not describe the pool for its mDNS advert")
            return None

    def _service_info(self, advert: PoolAdvert, *, name: str | None = None) -> Any:
        from zeroconf.asyncio import AsyncServiceInfo

        return AsyncServiceInfo(
            SERVICE_TYPE,
            name or service_name(advert.pool_name, advert.pool_id),
            addresses=[socket.inet_aton(a) for a in self._addresses],
            port=self._port,
            properties=encode_txt(advert),
            server=f"butterfly-{advert.pool_id[3:15]}.local.",
        )


def _adapter_addresses() -> list[str]:
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_link_local:
                found.append(ip.ip)
    return found
