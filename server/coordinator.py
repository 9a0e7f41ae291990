"""The coordinator process: one aiohttp server for volunteers (``/ws``) and clients.

Routes:
- ``GET /ws`` — volunteers dial out to this websocket; binary frames only.
- ``POST /api/generate`` — stream an answer as newline-delimited JSON (used by
  ``butterfly generate``); body ``{"prompt": str} | {"messages": [...]}`` plus sampling fields.
- ``GET /api/status`` — the pool as JSON; ``GET /healthz`` — liveness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from core.errors import ButterflyError, ConfigError, ProtocolViolation
from core.identity import Identity, create_invite, parse_invite
from core.protocol.frames import Limits
from core.protocol.session import ProtocolConnection, Role
from core.store.store import StoredModel
from core.tls import CERT_FILE_NAME, server_context
from core.transport import Channel, ChannelClosed
from server.admission import admit
from server.api.access import plain_error_response
from server.api.surface import ClientSurface
from server.advertise import PoolAdvertiser, advert_addresses, coordinator_advert
from server.config import CoordinatorConfig
from server.generation import generate
from server.links import VolunteerLink
from server.pool import Pool
from server.ws_limits import WsLimits
from server.db import DB_FILE_NAME, Contribution, SqlitePoolRegistry
from server.sampling import SamplingParams

log = logging.getLogger(__name__)

CONTRIBUTION_EVERY_BEATS = 5
"""Contribution counters are written to the registry every this many heartbeats."""
WS_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class RunningCoordinator:
    """Handles of a started coordinator."""

    url: str
    ws_url: str
    runner: web.AppRunner


class Coordinator:
    """Ties the pool key, the registry, the model and the pool to the HTTP server."""

    def __init__(self, config: CoordinatorConfig, model: StoredModel, *, identity: Identity | None = None) -> None:
        self.config = config
        self.model = model
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = identity or Identity.load_or_create(config.data_dir / "pool_key.pem")
        self.registry = SqlitePoolRegistry(config.data_dir / DB_FILE_NAME)
        self.pool = Pool(config, model, identity=self.identity)
        self.pool.on_quarantine = lambda node_id, reason: self.registry.ban(node_id, reason, time.time())
        self.tokenizer = model.tokenizer()
        self.url = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._recorded: dict[int, tuple[int, int, float, int, int]] = {}
        self._runner: web.AppRunner | None = None
        self.surface = ClientSurface(self)
        self.ws_limits = WsLimits(config)
        self.advertiser: PoolAdvertiser | None = None

    @property
    def pool_id(self) -> str:
        return self.identity.fingerprint

    # --- lifecycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.http_max_body_bytes)
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_post("/api/generate", self._generate_handler)
        app.router.add_get("/api/status", self._status_handler)
        app.router.add_get("/healthz", self._health_handler)
        app.router.add_post("/api/debug/slowdown", self._slowdown_handler)
        self.surface.install(app)
        return app

    async def start(self) -> RunningCoordinator:
        """Bind the server and start planning and heartbeats; returns the URLs."""
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, keepalive_timeout=self.config.http_idle_timeout_s
        )
        await self._runner.setup()
        context = None if self.config.insecure_loopback else self.tls_context()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "http" if context is None else "https"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        self.url = self.config.public_url or f"{scheme}://{host}:{port}"
        self.pool.start()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeats"))
        if self.config.mdns:
            self.advertiser = PoolAdvertiser(
                describe=lambda: coordinator_advert(self),
                port=port,
                addresses=advert_addresses(self.config.host, self.config.mdns_interfaces),
            )
            await self.advertiser.start()
        return RunningCoordinator(self.url, self.ws_url, self._runner)

    def tls_context(self) -> ssl.SSLContext:
        """TLS with the pool key as the certificate key (see :mod:`core.tls`); writes ``pool_cert.pem``."""
        hosts = [self.config.host]
        if self.config.public_url:
            hosts.append(urlsplit(self.config.public_url).hostname or "")
        return server_context(
            self.identity,
            cert_file=self.config.data_dir / CERT_FILE_NAME,
            pool_name=self.config.pool_name,
            hosts=hosts,
        )

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://").replace("https://", "wss://") + "/ws"

    async def stop(self) -> None:
        """Stop serving: running requests end with a clear error, volunteers are told goodbye."""
        self.pool.closing = True
        if self.advertiser is not None:
            await self.advertiser.stop()
        for task in self._tasks:
            task.cancel()
        await self.pool.stop()
        self._record_contributions()
        for link in list(self.pool.links.values()):
            await link.channel.bye("coordinator shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
        self.registry.close()

    def invite(self, *, ttl_s: float = 24 * 3600, max_uses: int | None = None) -> str:
        """A signed invite to this pool, pointing volunteers at its websocket."""
        now = time.time()
        token = create_invite(
            self.identity,
            pool_name=self.config.pool_name,
            addresses=[self.ws_url],
            ttl_s=ttl_s,
            max_uses=max_uses,
            now=now,
        )
        self.registry.record_invite(parse_invite(token), created_at=now)
        return token

    # --- volunteers ------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        if not self.ws_limits.pending.try_acquire(peer):
            log.info("refused a websocket from %s: too many unauthenticated connections", peer)
            return self.ws_limits.too_many_pending(peer)
        try:  # autoping off: the guard answers (and counts) pings itself
            ws = web.WebSocketResponse(
                max_msg_size=WS_LIMITS.max_frame_bytes, compress=False, autoping=False, heartbeat=None
            )
            await ws.prepare(request)
            channel = Channel(self.ws_limits.guard(ws), ProtocolConnection(Role.COORDINATOR, limits=WS_LIMITS))
            try:
                admitted = await admit(
                    channel,
                    identity=self.identity,
                    registry=self.registry,
                    pool_name=self.config.pool_name,
                    heartbeat_interval_s=self.config.heartbeat_interval_s,
                    timeout_s=self.config.handshake_timeout_s,
                    open_pool=self.config.open_pool,
                )
            except (ButterflyError, TimeoutError) as exc:
                err = exc if isinstance(exc, ButterflyError) else ProtocolViolation(
                    f"handshake not finished within {self.config.handshake_timeout_s:g} s"
                )
                log.warning("refused a volunteer from %s: %s", peer, err)
                self.pool.events.add("refused", f"refused a volunteer from {peer}: {err.message}")
                if not isinstance(err, ChannelClosed):
                    await channel.fail(err)
                return ws
        finally:
            self.ws_limits.pending.release(peer)
        hello = admitted.hello
        link = VolunteerLink(
            channel,
            node_id=admitted.node_id,
            name=hello.name or admitted.node_id[:12],
            os_name=hello.os,
            profile=_with_node_id(hello.profile, admitted.node_id),
            model=self.model,
            step_timeout_s=self.config.step_timeout_s,
            on_event=self.pool.on_link_event,
            wire_codec=self.config.wire_codec,
            logits_codec=self.config.wire_logits,
        )
        log.info("volunteer %s joined from %s", link.name, peer)
        reader = asyncio.create_task(link.serve(), name=f"link-{link.name}")
        await link.measure_link()
        self.pool.add(link)
        try:
            await link.send_model_info(
                model_id=self.model.manifest.model_id,
                model_name=self.model.manifest.name,
                hf_config=dict(self.model.hf_config),
                dtype=self.config.dtype,
            )
        except ButterflyError:
            pass  # the link is gone; its reader reports why
        await reader
        return ws

    def _record_contributions(self) -> None:
        """Add what each volunteer served since the last call to its counters in the registry."""
        batch = {}
        for link in list(self.pool.links.values()) + self.pool.departed:
            now = (link.steps_served, link.tokens_served, link.compute_s_total, link.channel.bytes_received, link.channel.bytes_sent)
            before = self._recorded.get(id(link), (0, 0, 0.0, 0, 0))
            delta = tuple(a - b for a, b in zip(now, before))
            self._recorded[id(link)] = now
            if any(delta):
                batch[link.node_id] = Contribution(
                    steps=delta[0], tokens=delta[1], compute_s=delta[2], bytes_in=delta[3], bytes_out=delta[4]
                ) + batch.get(link.node_id, Contribution())
        self.pool.departed.clear()
        if batch:
            try:
                self.registry.record_contributions(batch)
            except ButterflyError as exc:
                log.warning("could not record contributions: %s", exc)

    async def _heartbeat_loop(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            beats += 1
            if beats % CONTRIBUTION_EVERY_BEATS == 0:
                self._record_contributions()
            now = time.monotonic()
            for link in list(self.pool.links.values()):
                if now - link.last_seen > self.config.heartbeat_timeout_s:
                    link.close_reason = f"silent for {now - link.last_seen:.1f} s"
                    await link.channel.close(4002, "heartbeat timeout")
                    continue
                try:
                    await link.heartbeat()
                except Exception:  # noqa: BLE001 - a dying link is handled by its reader
                    pass

    # --- clients ---------------------------------------------------------------------

    async def _generate_handler(self, request: web.Request) -> web.StreamResponse:
        try:  # the same keys and per-key limits as /v1
            who = self.surface.access.admit(request)
        except ButterflyError as exc:
            return plain_error_response(exc)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ConfigError("the request body must be a JSON object")
            prompt_ids, params = self._parse_generate(body)
        except (ValueError, ButterflyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for event in generate(self.pool, self.tokenizer, prompt_ids, params):
                line: dict[str, Any] = {"token": event.token_id, "text": event.text}
                if event.finish_reason:
                    line["finish_reason"] = event.finish_reason
                if event.usage:
                    self.surface.access.charge(who, event.usage.completion_tokens)
                    line["usage"] = {
                        "prompt_tokens": event.usage.prompt_tokens,
                        "completion_tokens": event.usage.completion_tokens,
                        "time_to_first_token_s": round(event.usage.time_to_first_token_s, 4),
                        "decode_tokens_per_s": round(event.usage.decode_tokens_per_s, 2),
                        "total_s": round(event.usage.total_s, 4),
                    }
                await response.write((json.dumps(line) + "\n").encode())
        except ButterflyError as exc:
            await response.write((json.dumps({"error": str(exc)}) + "\n").encode())
        await response.write_eof()
        return response

    def _parse_generate(self, body: dict[str, Any]) -> tuple[list[int], SamplingParams]:
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise ConfigError("messages must be a list of {role, content} objects")
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            raise ConfigError("send either 'prompt' (a string) or 'messages'")
        stop = body.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        params = SamplingParams(
            max_tokens=int(body.get("max_tokens", 128)),
            temperature=float(body.get("temperature", 0.0)),
            top_k=int(body.get("top_k", 0)),
            top_p=float(body.get("top_p", 1.0)),
            seed=None if body.get("seed") is None else int(body["seed"]),
            stop=tuple(str(s) for s in stop),
            ignore_eos=bool(body.get("ignore_eos", False)),
        )
        return self.tokenizer.encode(text), params

    async def _status_handler(self, request: web.Request) -> web.Response:
        snap = self.pool.snapshot()
        snap["pool"] = {"id": self.pool_id, "name": self.config.pool_name, "url": self.url}
        return web.json_response(snap)

    async def _slowdown_handler(self, request: web.Request) -> web.Response:
        """Debug knob: ``{"volunteer": name or node id, "factor": 4}`` slows that volunteer's compute.

        Only from this machine (loopback), so a remote client can never degrade the pool.
        """
        if request.remote not in ("127.0.0.1", "::1"):
            return web.json_response({"error": "the slowdown knob only answers on loopback"}, status=403)
        try:
            body = await request.json()
            who, factor = str(body["volunteer"]), float(body["factor"])
            if not 1.0 <= factor <= 1000.0:
                raise ValueError("factor must be between 1 and 1000")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"send {{'volunteer': name, 'factor': 1..1000}}: {exc}"}, status=400)
        link = next((l for l in self.pool.links.values() if who in (l.name, l.node_id)), None)
        if link is None:
            return web.json_response({"error": f"no volunteer named {who!r}"}, status=404)
        await link.set_slowdown(factor)
        self.pool.events.add("debug", f"{link.name} slowed down {factor:g}x (debug knob)")
        return web.json_response({"volunteer": link.name, "factor": factor})

    async def _health_handler(self, request: web.Request) -> web.Response:
        ready = bool(self.pool.pipelines)
        return web.json_response({"ok": True, "ready": ready}, status=200)


def _with_node_id(profile: Any, node_id: str) -> Any:
    from dataclasses import replace

    return replace(profile, node_id=node_id)
