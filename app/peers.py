"""Direct links between volunteers on one LAN: found over mDNS, TLS websockets, hand-offs only.

A stage's output normally travels back through the coordinator to the next stage. When the
next stage's volunteer is on the same network, :class:`PeerNetwork` hands it over directly
(one hop instead of two); the coordinator still receives its copy and relays whenever no
direct link exists. So a direct link is an optimisation that may fail at any time: every
failure here is logged and turned into "no link", never raised into the serving path.

Promises:

* :meth:`PeerNetwork.start` listens on ``wss://<host>:<ephemeral port>/peer`` (TLS 1.3, the
  certificate is the node's own Ed25519 key) and advertises the node over mDNS as
  ``<node id>._butterfly-node._tcp.local.``; an mDNS failure is only logged.
* :meth:`PeerNetwork.send` writes a :class:`Handoff` on an open link and returns True, or
  returns False at once (no link: it starts finding one in the background; a write that
  failed: the link is dropped). ``True`` means written to a link whose listener accepted
  our proof, not that the listener used it.
* :meth:`PeerNetwork.want` finds and dials a node in the background, at most one attempt in
  flight per node; a failed attempt is logged and retried only after a growing backoff
  (:func:`retry_delay`), so a node on another network costs nothing per step.
* :meth:`PeerNetwork.stop` unregisters, closes every link and the server; never raises, and
  is bounded in time.

Trust model: the dialer checks, before it sends a byte, that the listener's TLS certificate
holds the key of the node id it wants, and that the challenge names the same key; the
listener checks the dialer's Ed25519 signature over :func:`core.identity.peer_transcript`
(the pool id, the listener's node id, the dialer's key and a fresh nonce), so a signature
cannot be replayed to another listener, pool or connection. The link is thus encrypted and
both ends are proven holders of their node keys, signing for this pool. The node ids
themselves come from the coordinator (``Forward.next_node`` / ``from_node``): the listener
uses a hand-off only when the coordinator's Forward for that step names the dialer as
``from_node`` and agrees on session and position; the volunteer's step logic
(:mod:`app.volunteer`) makes that check, not this module. An mDNS record is only a hint
of where to dial: a false one costs a failed attempt, never trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from app.discovery import pick_address
from core.errors import AuthFailed, ButterflyError, ConfigError, ProtocolViolation
from core.identity import NONCE_BYTES, Identity, fingerprint, peer_transcript, verify_signature
from core.protocol.frames import Limits
from core.protocol.messages import Bye, Handoff, Message, PeerAuth, PeerChallenge
from core.protocol.peer import PeerConnection, PeerRole, PeerState
from core.tls import client_context, peer_pool_id, server_context

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_butterfly-node._tcp.local."
"""The DNS-SD service type every volunteer that accepts direct links advertises."""
TXT_VERSION: Final = "1"
PEER_PATH: Final = "/peer"
CERT_FILE_NAME: Final = "node_cert.pem"
RESOLVE_TIMEOUT_MS: Final = 3000
"""Milliseconds to wait for a node's mDNS answer."""
HEARTBEAT_S: Final = 10.0
"""Seconds between websocket pings on a link; a link without a pong for half that is dead."""
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 60.0
"""Seconds before retrying a node whose link failed: the first wait, doubling up to the last."""
STOP_TIMEOUT_S: Final = 2.0
"""Seconds any one closing step of :meth:`PeerNetwork.stop` may take."""
MAX_REMEMBERED: Final = 4096
"""Nodes whose failures are remembered (for backoff and logging) before the memory is reset."""

_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,63}")
_GOING_AWAY = 1001


def retry_delay(failures: int) -> float:
    """Seconds to wait before the next attempt after ``failures`` (>= 1) failed ones: 1, 2, 4, ... 32, 60, 60, ...

    The first retry comes soon: a peer that just joined may not have finished announcing itself.
    """
    if failures < 1:
        raise ValueError("failures must be >= 1")
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** min(failures - 1, 32))


# --- what a node advertises ------------------------------------------------------------


def node_txt(node_id: str, pool_id: str) -> dict[str, str]:
    """The TXT record of a node's mDNS service."""
    return {"v": TXT_VERSION, "node": node_id, "pool": pool_id, "path": PEER_PATH}


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where a node said (over mDNS) that it listens for direct links."""

    node_id: str
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        """The websocket to dial, e.g. ``wss://192.168.1.7:40211/peer``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"wss://{host}:{self.port}{self.path}"


def peer_address(
    node_id: str, *, pool_id: str, properties: Mapping[Any, Any] | None, addresses: Sequence[str], port: int | None
) -> PeerAddress:
    """Read a resolved node service; raise :class:`ProtocolViolation` unless it is ``node_id`` of our pool.

    ``properties`` is the TXT record as zeroconf hands it over (bytes or text keys and values).
    """
    txt: dict[str, str] = {}
    for key, value in (properties or {}).items():
        try:
            k = key.decode("utf-8") if isinstance(key, bytes) else str(key)
            v = value.decode("utf-8") if isinstance(value, bytes) else ("" if value is None else str(value))
        except UnicodeDecodeError:
            raise ProtocolViolation("the node's TXT record is not UTF-8") from None
        txt[k] = v
    if txt.get("v") != TXT_VERSION:
        raise ProtocolViolation(f"the node's record has layout version {txt.get('v')!r}, this side reads {TXT_VERSION!r}")
    if txt.get("node") != node_id:
        raise ProtocolViolation(f"the record names node {txt.get('node')!r}, not {node_id!r}")
    if txt.get("pool") != pool_id:
        raise ProtocolViolation(f"the node belongs to pool {txt.get('pool')!r}, not {pool_id!r}")
    path = txt.get("path", "")
    if not _PATH.fullmatch(path):
        raise ProtocolViolation(f"the record's path {path[:70]!r} is not a websocket path")
    host = pick_address(addresses)
    if host is None:
        raise ProtocolViolation("the node's record has no usable address")
    if port is None or not 0 < port < 65536:
        raise ProtocolViolation(f"the node's port {port!r} is not valid")
    return PeerAddress(node_id=node_id, host=host, port=port, path=path)


def check_listener_key(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, node_id: str) -> None:
    """Raise :class:`AuthFailed` unless a finished TLS handshake proved the key of ``node_id``."""
    seen = peer_pool_id(ssl_object)
    if seen != node_id:
        raise AuthFailed(
            f"the volunteer at this address presents key {seen}, not node {node_id}",
            hint="another machine answered for that node on the local network; the coordinator relays instead",
        )


# --- the I/O layer -----------------------------------------------------------------------


class _Closed(Exception):
    """The other end closed the link (Bye, Error, a close frame) or it broke."""


@dataclass(slots=True, eq=False)
class _Link:
    """One open direct link: its websocket and state machine; sends are serialized by ``lock``."""

    ws: Any  # aiohttp.ClientWebSocketResponse (outbound) or web.WebSocketResponse (inbound)
    conn: PeerConnection
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reader: asyncio.Task[None] | None = None


class PeerNetwork:
    """This volunteer's direct links: a TLS listener for hand-offs in, dialed links for hand-offs out.

    ``on_handoff(dialer_node_id, msg)`` is called on the event loop for every hand-off an
    authenticated dialer sends. ``host`` is the IP address to listen on and advertise (a
    LAN address; 127.0.0.1 on one machine). ``cert_dir`` receives the node's public
    certificate. At most ``max_inbound`` inbound links, authenticated or still in their
    handshake, are kept; more are refused. A dialer has ``handshake_timeout_s`` to prove
    its key, and a dial attempt as long to finish once the node is resolved.
    ``listen_port`` fixes the listening port (0: any free one); ``advertise_port`` is the
    port announced over mDNS when peers reach this one through a forwarded port or a
    proxy (default: the listening port).
    Counters: ``handoffs_sent``, ``handoffs_received``, ``bytes_sent`` (frame bytes written).
    ``advertised`` is set once the mDNS service is registered (never, if mDNS failed).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        pool_id: str,
        host: str,
        cert_dir: Path,
        on_handoff: Callable[[str, Handoff], None],
        advertise: bool = True,
        handshake_timeout_s: float = 5.0,
        max_inbound: int = 32,
        listen_port: int = 0,
        advertise_port: int | None = None,
    ) -> None:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"direct links listen on an IP address, got {host!r}",
                              hint="pass this machine's LAN address, e.g. 192.168.1.7") from None
        if address.is_unspecified:
            raise ConfigError(f"direct links cannot be advertised on the wildcard address {host!r}",
                              hint="pass this machine's LAN address, e.g. 192.168.1.7")
        if not 0 <= listen_port < 65536 or (advertise_port is not None and not 0 < advertise_port < 65536):
            raise ConfigError(f"direct-link ports must be 0-65535, got {listen_port} / {advertise_port}",
                              hint="leave them out to listen on any free port and advertise it")
        if max_inbound < 1 or not handshake_timeout_s > 0:
            raise ConfigError("max_inbound must be >= 1 and handshake_timeout_s > 0",
                              hint="use the defaults: 32 links, 5 seconds")
        self.node_id: str = identity.fingerprint
        self.pool_id = pool_id
        self.host = str(address)
        self.port: int | None = None
        self.handoffs_sent = 0
        self.handoffs_received = 0
        self.bytes_sent = 0
        self.advertised = asyncio.Event()
        self._identity = identity
        self._cert_dir = Path(cert_dir)
        self._on_handoff = on_handoff
        self._advertise_enabled = advertise
        self._handshake_timeout_s = handshake_timeout_s
        self._max_inbound = max_inbound
        self._listen_port = listen_port
        self._advertise_port = advertise_port
        self._limits = Limits()
        self._client_ssl = client_context()
        self._outbound: dict[str, _Link] = {}
        self._inbound: dict[str, _Link] = {}
        self._inbound_count = 0
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._logged: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._zeroconf: Any = None
        self._service: Any = None
        self._advert_task: asyncio.Task[None] | None = None
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()

    # --- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host`` (ephemeral port, TLS 1.3, path ``/peer``) and start advertising over mDNS.

        Returns once the listener is up (``port`` is set); registering with mDNS goes on in
        the background (``advertised``). Raises :class:`ConfigError` when the listener
        cannot start; mDNS problems are only logged.
        """
        self._cert_dir.mkdir(parents=True, exist_ok=True)
        context = server_context(self._identity, cert_file=self._cert_dir / CERT_FILE_NAME,
                                 pool_name="Butterfly volunteer", hosts=[self.host])
        app = web.Application()
        app.router.add_get(PEER_PATH, self._accept)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=STOP_TIMEOUT_S)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self._listen_port, ssl_context=context).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(f"cannot listen for direct links on {self.host}: {exc}",
                              hint="check that the address belongs to this machine") from exc
        self.port = int(self._runner.addresses[0][1])
        self._http = aiohttp.ClientSession()
        self._running = True
        self._start_mdns()
        log.info("listening for direct links on wss://%s:%d%s as %s", self.host, self.port, PEER_PATH, self.node_id)

    async def stop(self) -> None:
        """Unregister from mDNS, close every link (saying goodbye) and the server; never raises.

        Each closing step is bounded by :data:`STOP_TIMEOUT_S` (the server's by twice that);
        on a healthy loopback the whole takes about half a second, most of it mDNS saying goodbye.
        """
        if not self._running:
            return
        self._running = False
        for task in list(self._dialing.values()):
            task.cancel()
        await self._stop_mdns()
        links = [*self._outbound.values(), *self._inbound.values()]
        self._outbound.clear()
        self._inbound.clear()
        if links:
            await asyncio.gather(*(self._goodbye(link, "the volunteer is stopping") for link in links),
                                 return_exceptions=True)
        doomed = [link.reader for link in links if link.reader is not None] + list(self._dialing.values())
        for task in doomed:
            task.cancel()
        if doomed or self._tasks:
            await asyncio.wait([*doomed, *self._tasks], timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            if self._runner is not None:
                await asyncio.wait_for(self._runner.cleanup(), 2 * STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            if self._http is not None:
                await asyncio.wait_for(self._http.close(), STOP_TIMEOUT_S)
        self._runner = self._http = None

    def _start_mdns(self) -> None:
        try:
            from zeroconf.asyncio import AsyncZeroconf

            self._zeroconf = AsyncZeroconf(interfaces=[self.host])
        except Exception as exc:  # noqa: BLE001 - a LAN without multicast falls back to relaying
            log.warning("mDNS is not available on %s (%s); steps are relayed through the coordinator", self.host, exc)
            self._zeroconf = None
            return
        if self._advertise_enabled:
            self._advert_task = asyncio.create_task(self._advertise(), name="peer-mdns-advert")

    async def _advertise(self) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            info = AsyncServiceInfo(
                SERVICE_TYPE,
                f"{self.node_id}.{SERVICE_TYPE}",
                addresses=[ipaddress.ip_address(self.host).packed],
                port=self._advertise_port or self.port,
                properties=node_txt(self.node_id, self.pool_id),
                server=f"{self.node_id}.local.",
            )
            announced = await self._zeroconf.async_register_service(info)
            self._service = info
            self.advertised.set()
            await announced
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - only this node's direct links are lost
            log.warning("could not advertise this volunteer for direct links over mDNS: %s", exc)

    async def _stop_mdns(self) -> None:
        if self._advert_task is not None:
            self._advert_task.cancel()
            with contextlib.suppress(BaseException):
                await self._advert_task
        zc, info = self._zeroconf, self._service
        self._zeroconf = self._service = self._advert_task = None
        if zc is None:
            return
        with contextlib.suppress(Exception):
            if info is not None:
                await asyncio.wait_for(await zc.async_unregister_service(info), STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(zc.async_close(), STOP_TIMEOUT_S)

    # --- status ---------------------------------------------------------------------

    def link_up(self, node_id: str) -> bool:
        """Whether an outbound link to ``node_id`` is open (a :meth:`send` to it would be written now)."""
        return node_id in self._outbound

    def links(self) -> list[str]:
        """The node ids connected now, outbound and inbound, sorted, each once."""
        return sorted({*self._outbound, *self._inbound})

    # --- sending --------------------------------------------------------------------

    async def send(self, node_id: str, msg: Handoff) -> bool:
        """Hand ``msg`` to ``node_id`` over the direct link; whether it was written.

        False when no link is open (a background :meth:`want` is started) or the write
        failed (the link is dropped). Never raises for network reasons; a message other
        than a Handoff raises :class:`ProtocolViolation`.
        """
        link = self._outbound.get(node_id)
        if link is None:
            self.want(node_id)
            return False
        try:
            async with link.lock:
                if link.conn.state is not PeerState.OPEN:
                    raise ConnectionResetError("the link closed")
                link.conn.send(msg)
                (data,) = link.conn.data_to_send()
                if len(data) > self._limits.max_frame_bytes:
                    log.debug("a hand-off of %d bytes exceeds the frame limit; relaying it instead", len(data))
                    return False
                await link.ws.send_bytes(data)
                self.bytes_sent += len(data)
        except (ConnectionError, aiohttp.ClientError, OSError) as exc:
            log.info("direct link to %s broke while sending (%s); relaying instead", node_id, exc)
            self._drop_outbound(node_id, link)
            return False
        self.handoffs_sent += 1
        return True

    def want(self, node_id: str) -> None:
        """Start finding and dialing ``node_id`` in the background, unless linked, already trying, or backing off.

        Must be called on the event loop. Does nothing before :meth:`start` or after :meth:`stop`.
        """
        if (not self._running or node_id == self.node_id or node_id in self._outbound
                or node_id in self._dialing):
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at.get(node_id, 0.0):
            return
        self._dialing[node_id] = loop.create_task(self._dial(node_id), name=f"peer-dial-{node_id}")

    async def _dial(self, node_id: str) -> None:
        try:
            address = await self._resolve(node_id)
            async with asyncio.timeout(self._handshake_timeout_s):
                link = await self._connect(address)
        except asyncio.CancelledError:
            raise
        except (ButterflyError, _Closed, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._attempt_failed(node_id, _describe(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the serving path
            log.exception("dialing %s failed unexpectedly", node_id)
            self._attempt_failed(node_id, _describe(exc))
            return
        finally:
            self._dialing.pop(node_id, None)
        if not self._running:
            await self._goodbye(link, "the volunteer is stopping")
            return
        self._failures.pop(node_id, None)
        self._retry_at.pop(node_id, None)
        self._logged.discard(node_id)
        self._outbound[node_id] = link
        link.reader = asyncio.create_task(self._read_outbound(node_id, link), name=f"peer-out-{node_id}")
        log.info("direct link to %s is up (%s)", node_id, address.url)

    async def _resolve(self, node_id: str) -> PeerAddress:
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zeroconf is None:
            raise ConfigError("mDNS is not available on this machine", hint="steps are relayed through the coordinator")
        info = AsyncServiceInfo(SERVICE_TYPE, f"{node_id}.{SERVICE_TYPE}")
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            raise ConfigError("it did not answer over mDNS", hint="it may be on another network")
        return peer_address(node_id, pool_id=self.pool_id, properties=info.properties,
                            addresses=info.parsed_addresses(), port=info.port)

    async def _connect(self, address: PeerAddress) -> _Link:
        assert self._http is not None
        ws = await self._http.ws_connect(
            address.url, ssl=self._client_ssl, max_msg_size=self._limits.max_frame_bytes, compress=0,
            autoping=False, heartbeat=HEARTBEAT_S, proxy=None,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=STOP_TIMEOUT_S),
        )
        conn = PeerConnection(PeerRole.DIALER, limits=self._limits)
        proven = False
        try:
            check_listener_key(ws.get_extra_info("ssl_object"), address.node_id)  # before a byte is sent
            proven = True
            challenge = await _dialer_read(ws, conn)
            if not isinstance(challenge, PeerChallenge):
                raise _Closed(conn.close_reason or "the listener closed the link")
            if fingerprint(challenge.node_public_key) != address.node_id:
                raise AuthFailed(f"the listener's challenge names key {fingerprint(challenge.node_public_key)}, "
                                 f"not node {address.node_id}", hint="the other volunteer is faulty")
            transcript = peer_transcript(pool_id=self.pool_id, listener_id=address.node_id,
                                         dialer_public_key=self._identity.public_key, nonce=challenge.nonce)
            conn.send(PeerAuth(node_public_key=self._identity.public_key, signature=self._identity.sign(transcript)))
            for data in conn.data_to_send():
                await ws.send_bytes(data)
            # The listener reads and checks PeerAuth before it answers the next ping, so a
            # pong carrying our token means the link was accepted.
            token = secrets.token_bytes(8)
            await ws.ping(token)
            await _dialer_read(ws, conn, pong=token)
        except BaseException as exc:
            if proven and isinstance(exc, ButterflyError):  # an unproven listener is told nothing
                conn.fail(exc)
                with contextlib.suppress(Exception):
                    for data in conn.data_to_send():
                        await ws.send_bytes(data)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=conn.close_code or 1000), STOP_TIMEOUT_S)
            raise
        return _Link(ws, conn)

    async def _read_outbound(self, node_id: str, link: _Link) -> None:
        """Answer pings and notice the end of an outbound link; the listener sends nothing else."""
        try:
            await _dialer_read(link.ws, link.conn)
        except ButterflyError as exc:
            async with link.lock:
                link.conn.fail(exc)
                with contextlib.suppress(Exception):
                    for data in link.conn.data_to_send():
                        await link.ws.send_bytes(data)
            log.info("direct link to %s closed: %s", node_id, exc.message)
        except (_Closed, aiohttp.ClientError, OSError) as exc:
            log.info("direct link to %s closed: %s", node_id, _describe(exc))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug must not kill the serving path
            log.exception("reading the direct link to %s failed", node_id)
        finally:
            self._drop_outbound(node_id, link)

    def _drop_outbound(self, node_id: str, link: _Link) -> None:
        if self._outbound.get(node_id) is link:
            del self._outbound[node_id]
        if not link.ws.closed:
            task = asyncio.get_running_loop().create_task(self._close_ws(link))
            self._background(task)

    def _attempt_failed(self, node_id: str, reason: str) -> None:
        if len(self._failures) >= MAX_REMEMBERED:
            self._failures.clear()
            self._retry_at.clear()
            self._logged.clear()
        failures = self._failures.get(node_id, 0) + 1
        self._failures[node_id] = failures
        delay = retry_delay(failures)
        self._retry_at[node_id] = asyncio.get_running_loop().time() + delay
        level = logging.DEBUG if node_id in self._logged else logging.INFO
        self._logged.add(node_id)
        log.log(level, "no direct link to %s (%s); relaying through the coordinator, next try in %.0f s",
                node_id, reason, delay)

    # --- receiving ------------------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if not self._running or self._inbound_count >= self._max_inbound:
            return web.Response(status=503, text="no more direct links now\n", headers={"Retry-After": "5"})
        ws = web.WebSocketResponse(max_msg_size=self._limits.max_frame_bytes, compress=False, autoping=True,
                                   heartbeat=HEARTBEAT_S, timeout=STOP_TIMEOUT_S)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="this address takes Butterfly direct links (websocket) only\n")
        self._inbound_count += 1
        link = _Link(ws, PeerConnection(PeerRole.LISTENER, limits=self._limits))
        dialer: str | None = None
        try:
            await ws.prepare(request)
            dialer = await self._handshake(link)
            if dialer is None:
                return ws
            while True:
                msg = await _listener_read(ws, link.conn)
                if not isinstance(msg, Handoff):
                    break  # closed, or Bye / Error
                self.handoffs_received += 1
                try:
                    self._on_handoff(dialer, msg)
                except Exception:  # noqa: BLE001 - our consumer's fault, not the link's
                    log.exception("handling a hand-off from %s failed", dialer)
        except ButterflyError as exc:
            async with link.lock:
                link.conn.fail(exc)
                with contextlib.suppress(Exception):
                    for data in link.conn.data_to_send():
                        await ws.send_bytes(data)
            log.info("refused a direct link from %s: %s", dialer or request.remote, exc.message)
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("direct link from %s broke: %s", dialer or request.remote, exc)
        finally:
            self._inbound_count -= 1
            if dialer is not None and self._inbound.get(dialer) is link:
                del self._inbound[dialer]
            await self._close_ws(link)
        return ws

    async def _handshake(self, link: _Link) -> str | None:
        """Challenge the dialer and check its proof; its node id, or None if it went away."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        async with link.lock:
            link.conn.send(PeerChallenge(node_public_key=self._identity.public_key, nonce=nonce))
            for data in link.conn.data_to_send():
                await link.ws.send_bytes(data)
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                auth = await _listener_read(link.ws, link.conn)
        except TimeoutError:
            raise AuthFailed(f"no proof of identity within {self._handshake_timeout_s:g} s",
                             hint="the dialer is too slow or not a Butterfly volunteer") from None
        if not isinstance(auth, PeerAuth):
            return None
        transcript = peer_transcript(pool_id=self.pool_id, listener_id=self.node_id,
                                     dialer_public_key=auth.node_public_key, nonce=nonce)
        if not verify_signature(auth.node_public_key, auth.signature, transcript):
            raise AuthFailed("the dialer's signature does not prove its key for this pool and node",
                             hint="both volunteers must belong to the same pool")
        dialer = fingerprint(auth.node_public_key)
        previous = self._inbound.get(dialer)
        self._inbound[dialer] = link
        if previous is not None:  # the dialer reconnected; its old link is stale
            self._background(asyncio.get_running_loop().create_task(self._close_ws(previous)))
        return dialer

    # --- closing --------------------------------------------------------------------

    async def _goodbye(self, link: _Link, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                async with link.lock:
                    if link.conn.state is not PeerState.CLOSED:
                        link.conn.send(Bye(reason=reason))
                        for data in link.conn.data_to_send():
                            await link.ws.send_bytes(data)
        await self._close_ws(link, code=_GOING_AWAY)

    async def _close_ws(self, link: _Link, *, code: int | None = None) -> None:
        with contextlib.suppress(Exception):
            reason = (link.conn.close_reason or "").encode("utf-8")[:120]
            await asyncio.wait_for(link.ws.close(code=code or link.conn.close_code or 1000, message=reason),
                                   STOP_TIMEOUT_S)

    def _background(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _dialer_read(ws: Any, conn: PeerConnection, *, pong: bytes | None = None) -> Message | None:
    """The next message on a dialed link, answering pings; with ``pong``, None once that ping is echoed.

    Raises :class:`_Closed` when the link ends (Bye and Error included) and
    :class:`ProtocolViolation` for bad input. Once open, a listener sends no data, so on an
    open link this returns only by raising.
    """
    while True:
        raw = await ws.receive()
        if raw.type is aiohttp.WSMsgType.PING:
            await ws.pong(raw.data)
        elif raw.type is aiohttp.WSMsgType.PONG:
            if pong is not None and raw.data == pong:
                return None
        elif raw.type is aiohttp.WSMsgType.BINARY:
            conn.receive(raw.data)
            events = conn.events()
            if conn.state is PeerState.CLOSED:
                raise _Closed(conn.close_reason or "the listener closed the link")
            if events:
                return events[0]
        elif raw.type is aiohttp.WSMsgType.TEXT:
            raise ProtocolViolation("text websocket messages are not part of the protocol")
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            raise _Closed(_close_text(ws, raw))


async def _listener_read(ws: web.WebSocketResponse, conn: PeerConnection) -> Message | None:
    """The next message from the dialer (pings are answered by aiohttp); None once the link ended."""
    while True:
        raw = await ws.receive()
        if raw.type is aiohttp.WSMsgType.BINARY:
            conn.receive(raw.data)
            events = conn.events()
            if events:
                return events[0]
        elif raw.type is aiohttp.WSMsgType.TEXT:
            raise ProtocolViolation("text websocket messages are not part of the protocol")
        elif raw.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
            continue
        else:
            return None


def _close_text(ws: Any, raw: aiohttp.WSMessage) -> str:
    if raw.type is aiohttp.WSMsgType.ERROR:
        return f"the link broke: {raw.data}"
    reason = raw.extra if isinstance(raw.extra, str) and raw.extra else ""
    return f"the other side closed the link ({ws.close_code}{': ' + reason if reason else ''})"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ButterflyError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "it did not answer in time"
    return str(exc) or type(exc).__name__


__all__ = [
    "SERVICE_TYPE",
    "PeerAddress",
    "PeerNetwork",
    "check_listener_key",
    "node_txt",
    "peer_address",
    "retry_delay",
]
