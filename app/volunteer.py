"""The headless volunteer: dial out to a coordinator, prove who we are, load our layers, serve.

One :class:`Volunteer` holds one websocket to one pool. The reader task answers
heartbeats and weight chunks at once; forward steps go through a queue to a single
compute thread, so torch never blocks the event loop and steps of a session stay in
order; decode steps of different sessions waiting together run as one packed forward
(:mod:`app.batching`). Activations arrive and leave in the step's wire codec
(:mod:`core.protocol.codec`); compute always runs in the shard's dtype. Weights arrive from the coordinator tensor by tensor and are checked against the
sha256 in the assignment before use; nothing from the pool is ever executed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import itertools
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import torch

from app.batching import DEFAULT_MAX_BATCH, PREFILL_CAP_S, PREFILL_GAP_S, Step, gather_window_s, take_batch
from core.backoff import backoff_delay
from core.errors import AuthFailed, ButterflyError, ConfigError, ProtocolViolation, ShardLoadFailed
from core.identity import Identity, auth_transcript, fingerprint, parse_invite, verify_signature
from core.model.config import ModelConfig
from core.model.kv_cache import KVCache
from core.model.shard import Shard
from core.protocol.bounds import check_forward_input
from core.protocol.codec import EncodedTensor, decode, encode
from core.protocol.frames import PROTOCOL_VERSION, Limits
from core.protocol.messages import (
    Accepted,
    Assign,
    Auth,
    Bye,
    Challenge,
    Drain,
    EndSession,
    Error,
    Feed,
    FetchTensor,
    Forward,
    Handoff,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LoadProgress,
    Ready,
    Result,
    SetSlowdown,
    TensorChunk,
    Unassign,
    LinkProbe,
    LinkProbeAck,
    ModelInfo,
    ProfileUpdate,
)
from core.protocol.session import ProtocolConnection, Role
from core.protocol.signing import verify_assignment
from core.protocol.top_logits import top_logits
from core.tls import check_pin, client_context, peer_pool_id, require_loopback
from core.transport import Channel, ChannelClosed
from core.types import HardwareProfile

if TYPE_CHECKING:
    from app.peers import PeerNetwork

log = logging.getLogger(__name__)

APP_VERSION = "0.1.0"
FETCH_WINDOW = 4
PROGRESS_EVERY_S = 0.25
AWAIT_INPUT_S = 30.0
"""How long a step waits for its input from a peer (or the coordinator) before it is given up."""
MAX_EARLY_HANDOFFS = 256
"""Hand-offs kept that arrived before their step's Forward (bounded: a peer cannot fill memory)."""
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True, kw_only=True)
class VolunteerConfig:
    """How this volunteer joins.

    ``url`` is the coordinator's websocket (taken from the invite when omitted);
    ``data_dir`` holds this install's key and the pools it has pinned; ``slowdown``
    multiplies this volunteer's compute time (a debug knob for tests and demos).
    ``pool_id`` is the pool key to insist on (e.g. from an mDNS record the user agreed
    to join); without it the invite's key, then the key pinned on an earlier join, is
    used, and a first join by bare URL pins what it finds. ``wss://`` is required unless
    ``insecure_loopback`` allows plain ``ws://`` to this machine (development).
    ``perturb`` (debug only) adds noise of that relative size to every output, so the
    pool's result validation can be seen catching and quarantining a wrong volunteer.
    ``max_batch`` bounds how many waiting steps (decode steps, or prompts queued together) run as
    one forward (1: no batching).
    ``direct_links``: accept and open direct links to the pool's other volunteers
    (:mod:`app.peers`, found over mDNS), so hidden states skip the coordinator; off, the
    coordinator relays them. ``peer_host`` is the address to listen on for them (default:
    the address this machine reaches the coordinator from), ``peer_port`` the port (0: any
    free one) and ``peer_advertise_port`` the port other volunteers are told to dial, when
    it differs (a forwarded port).
    """

    data_dir: Path
    url: str | None = None
    memory_cap_bytes: int | None = None
    benchmark: bool = True
    benchmark_cache: Path | None = None
    invite: str | None = None
    name: str = ""
    profile: HardwareProfile
    chunk_bytes: int = 8 * 2**20
    max_sessions: int = 64
    drain_timeout_s: float = 60.0
    slowdown: float = 1.0
    pool_id: str | None = None
    insecure_loopback: bool = False
    perturb: float = 0.0
    max_batch: int = DEFAULT_MAX_BATCH
    direct_links: bool = True
    peer_host: str | None = None
    peer_port: int = 0
    peer_advertise_port: int | None = None


@dataclass(frozen=True, slots=True)
class _Answer:
    """A step's output as it leaves: encoded for the wire, with token ids when it is top logits only."""

    out: EncodedTensor
    indices: torch.Tensor | None = None


@dataclass(slots=True)
class _LoadedShard:
    assignment_id: str
    shard: Shard
    hashes: frozenset[str] = frozenset()
    max_tokens: int = 0  # the assignment's context budget: no step may reach past it
    caches: dict[str, KVCache] = field(default_factory=dict)
    waves: dict[str, frozenset[str]] = field(default_factory=dict)  # session -> the sessions of its last forward
    last_pass_s: float = 0.0  # how long the last forward took


class Volunteer:
    """One volunteer's session with one pool."""

    def __init__(self, config: VolunteerConfig, *, on_status: Callable[[str], None] | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = Identity.load_or_create(config.data_dir / "node_key.pem")
        self.invite = parse_invite(config.invite) if config.invite else None
        self.url = config.url or (self.invite.addresses[0] if self.invite and self.invite.addresses else None)
        if not self.url:
            raise ConfigError("no coordinator address", hint="pass --invite (it carries the address) or --url")
        if not self.url.startswith("wss://"):  # refused for good, before any connection
            if not self.url.startswith("ws://"):
                raise ConfigError(f"a pool address must be a wss:// URL, got {self.url!r}", hint="use the address from the invite")
            if not config.insecure_loopback:
                raise ConfigError(
                    f"refusing unencrypted {self.url}",
                    hint="use the pool's wss:// address; for a development pool on this machine pass --insecure-loopback",
                )
            require_loopback(self.url, who="volunteer")
        self.slowdown = config.slowdown
        if config.perturb:
            log.warning("DEBUG --perturb %g: this volunteer returns WRONG results on purpose", config.perturb)
        self.shards: dict[str, _LoadedShard] = {}
        self.node_id = self.identity.fingerprint
        self.pool_id: str | None = None
        self.steps = 0
        self._on_status = on_status or (lambda s: None)
        self._channel: Channel | None = None
        self._queue: asyncio.Queue[Forward | EndSession | Unassign | None] = asyncio.Queue()
        self._chunks: dict[tuple[str, str, int], asyncio.Future[TensorChunk]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard")
        self._draining = False
        self._done = asyncio.Event()
        self._tensors: dict[str, torch.Tensor] = {}  # sha256 -> fetched tensor, reused across assignments
        self.end_reason = "closed"
        self._tls_pool_id: str | None = None
        self._pool_public_key: bytes | None = None
        self.peers: PeerNetwork | None = None
        self._awaiting: dict[int, tuple[Forward, float]] = {}  # step id -> a Forward whose input comes from a peer
        self._early: dict[int, tuple[str, Handoff, float]] = {}  # step id -> (sender, hand-off) before its Forward
        self.handoffs_used = 0  # steps whose input came straight from a peer
        self.handoffs_sent = 0  # outputs handed straight to the next stage

    # --- pinning ---------------------------------------------------------------------

    def _pins_path(self) -> Path:
        return self.config.data_dir / "pools.json"

    def _pinned_pool_id(self) -> str | None:
        if self.config.pool_id:
            return self.config.pool_id
        if self.invite is not None:
            return self.invite.pool_id
        try:
            return json.loads(self._pins_path().read_text()).get(self.url)
        except (OSError, ValueError, AttributeError):
            return None

    def _pin(self, pool_id: str) -> None:
        path = self._pins_path()
        try:
            pins = json.loads(path.read_text())
            if not isinstance(pins, dict):
                pins = {}
        except (OSError, ValueError):
            pins = {}
        pins[self.url] = pool_id
        path.write_text(json.dumps(pins, indent=2))

    # --- run -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, authenticate and serve until the pool says goodbye or we finish draining."""
        secure = self.url.startswith("wss://")
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(
                    self.url, max_msg_size=Limits().max_frame_bytes, compress=0, autoping=True, proxy=None,
                    ssl=client_context() if secure else False,
                )
            except (aiohttp.ClientError, OSError) as exc:
                raise ConfigError(
                    f"cannot reach the coordinator at {self.url}: {exc}",
                    hint="check the address and that the coordinator is running",
                ) from exc
            self._channel = channel = Channel(ws, ProtocolConnection(Role.VOLUNTEER))
            try:
                if secure:  # the pin is checked before anything (the invite included) is sent
                    seen = peer_pool_id(ws.get_extra_info("ssl_object"))
                    check_pin(seen, self._pinned_pool_id(), where=self.url)
                    self._tls_pool_id = seen
                await self._handshake(channel)
                await self._start_peers(ws)
                self._on_status("connected")
                worker = asyncio.create_task(self._compute_loop(), name="compute")
                try:
                    await self._read_loop(channel)
                finally:
                    await self._queue.put(None)
                    worker.cancel()
            except ButterflyError as exc:
                if not isinstance(exc, ChannelClosed) and (self._tls_pool_id is not None or not secure):
                    await channel.fail(exc)  # an unproven peer is told nothing
                raise
            finally:
                if self.peers is not None:
                    await self.peers.stop()
                await channel.close()
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._done.set()

    def request_drain(self) -> None:
        """Ask to leave: the coordinator moves our work away, then says goodbye."""
        if self._draining or self._channel is None:
            return
        self._draining = True
        self._on_status("draining")
        channel = self._channel

        async def drain() -> None:
            try:
                await channel.send(Drain(reason="the volunteer is leaving"))
                await asyncio.wait_for(self._done.wait(), self.config.drain_timeout_s)
            except TimeoutError:
                log.warning("the coordinator did not release us within %.0f s; leaving anyway", self.config.drain_timeout_s)
                await channel.bye("drain timed out")
            except Exception:  # noqa: BLE001 - the connection may already be gone
                await channel.close()

        asyncio.create_task(drain())

    async def _handshake(self, channel: Channel) -> None:
        client_nonce = os.urandom(32)
        profile = replace(self.config.profile, node_id=self.node_id, name=self.config.name or self.config.profile.name)
        await channel.send(
            Hello(
                protocol_version=PROTOCOL_VERSION,
                node_public_key=self.identity.public_key,
                name=profile.name[:64],
                os=profile.os[:64],
                app_version=APP_VERSION,
                profile=profile,
                invite=self.config.invite,
                client_nonce=client_nonce,
            )
        )
        challenge = await channel.recv(timeout=30)
        if isinstance(challenge, Error):
            raise AuthFailed(f"the pool refused us: {challenge.message}", hint=challenge.hint)
        if not isinstance(challenge, Challenge):
            raise ProtocolViolation(f"expected a challenge, got {type(challenge).__name__}")
        pool_id = fingerprint(challenge.pool_public_key)
        if self._tls_pool_id is not None and pool_id != self._tls_pool_id:
            raise AuthFailed(
                f"the pool's TLS key {self._tls_pool_id} differs from the key {pool_id} it signs with",
                hint="something between you and the pool intercepts the connection; do not join",
            )
        pinned = self._pinned_pool_id()
        if pinned is not None and pinned != pool_id:
            raise AuthFailed(
                f"the pool at {self.url} has key {pool_id}, but we expected {pinned}",
                hint="someone may be impersonating the pool; get a fresh invite from the host",
            )
        transcript = auth_transcript(role="pool", pool_id=pool_id, node_public_key=self.identity.public_key, nonce=client_nonce)
        if not verify_signature(challenge.pool_public_key, challenge.pool_signature, transcript):
            raise AuthFailed("the pool could not prove it holds its key", hint="do not join this pool")
        signature = self.identity.sign(
            auth_transcript(role="node", pool_id=pool_id, node_public_key=self.identity.public_key, nonce=challenge.nonce)
        )
        await channel.send(Auth(signature=signature))
        accepted = await channel.recv(timeout=30)
        if isinstance(accepted, Error):
            raise AuthFailed(f"the pool refused us: {accepted.message}", hint=accepted.hint)
        if not isinstance(accepted, Accepted):
            raise ProtocolViolation(f"expected acceptance, got {type(accepted).__name__}")
        self.pool_id = pool_id
        self._pool_public_key = challenge.pool_public_key
        self._pin(pool_id)
        log.info("joined pool %s (%s) as %s", challenge.pool_name, pool_id, self.node_id)

    async def _read_loop(self, channel: Channel) -> None:
        loads: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    msg = await channel.recv()
                except ChannelClosed:
                    return
                if isinstance(msg, Forward) and msg.awaits_input:
                    self._await_input(msg)
                elif isinstance(msg, Forward | EndSession):
                    if isinstance(msg, Forward) and msg.next_node is not None and self.peers is not None:
                        self.peers.want(msg.next_node)  # dial while the step computes
                    self._queue.put_nowait(msg)
                elif isinstance(msg, Feed):
                    self._input_arrived(msg.step_id, None, msg.x, msg.codec, msg.scales)
                elif isinstance(msg, TensorChunk):
                    fut = self._chunks.pop((msg.assignment_id, msg.name, msg.offset), None)
                    if fut is None or fut.done():
                        raise ProtocolViolation(f"unrequested chunk of {msg.name} at {msg.offset}")
                    fut.set_result(msg)
                elif isinstance(msg, Heartbeat):
                    await channel.send(HeartbeatAck(seq=msg.seq, sent_at=msg.sent_at))
                elif isinstance(msg, Assign):
                    task = asyncio.create_task(self._load(channel, msg), name=f"load-{msg.assignment_id}")
                    loads.add(task)
                    task.add_done_callback(loads.discard)
                elif isinstance(msg, Unassign):
                    self._queue.put_nowait(msg)
                elif isinstance(msg, LinkProbe):
                    await channel.send(LinkProbeAck(seq=msg.seq, sent_at=msg.sent_at, received_bytes=msg.payload.numel()))
                elif isinstance(msg, ModelInfo):
                    task = asyncio.create_task(self._benchmark(channel, msg), name="benchmark")
                    loads.add(task)
                    task.add_done_callback(loads.discard)
                elif isinstance(msg, SetSlowdown):
                    self.slowdown = msg.factor
                elif isinstance(msg, Drain):
                    self.request_drain()
                elif isinstance(msg, Bye):
                    log.info("the pool said goodbye: %s", msg.reason)
                    self.end_reason = "drained" if self._draining else "bye"
                    return
                elif isinstance(msg, Error):
                    log.warning("the pool reported an error: %s", msg.message)
                    return
        finally:
            for task in loads:
                task.cancel()

    # --- direct links ----------------------------------------------------------------

    async def _start_peers(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Listen for the pool's other volunteers on the address that reaches the coordinator, and advertise it."""
        if not self.config.direct_links or self.pool_id is None:
            return
        from app.peers import PeerNetwork

        sockname = ws.get_extra_info("sockname")
        host = self.config.peer_host or (sockname[0] if isinstance(sockname, tuple) and sockname else "127.0.0.1")
        peers = PeerNetwork(self.identity, pool_id=self.pool_id, host=host, cert_dir=self.config.data_dir,
                            on_handoff=self._on_handoff, listen_port=self.config.peer_port,
                            advertise_port=self.config.peer_advertise_port)
        try:
            await peers.start()
        except (OSError, ButterflyError) as exc:
            log.warning("direct links are off: cannot listen on %s (%s); the coordinator relays", host, exc)
            await peers.stop()
            return
        self.peers = peers

    def _await_input(self, msg: Forward) -> None:
        """Hold a step until its input arrives from ``msg.from_node`` (or a Feed); it may already have."""
        self._expire_awaiting()
        early = self._early.pop(msg.step_id, None)
        self._awaiting[msg.step_id] = (msg, time.monotonic())
        if self.peers is not None and msg.next_node is not None:
            self.peers.want(msg.next_node)  # dial ahead: the output goes there
        if early is not None:
            sender, handoff, _ = early
            self._on_handoff(sender, handoff)

    def _on_handoff(self, sender: str, handoff: Handoff) -> None:
        """A peer handed over a step's input: use it if the coordinator named that peer for the step."""
        waiting = self._awaiting.get(handoff.step_id)
        if waiting is None:
            self._expire_awaiting()
            if len(self._early) >= MAX_EARLY_HANDOFFS:
                del self._early[next(iter(self._early))]
            self._early[handoff.step_id] = (sender, handoff, time.monotonic())
            return
        forward = waiting[0]
        if forward.from_node != sender or (forward.session_id, forward.start_pos) != (handoff.session_id, handoff.start_pos):
            log.warning("ignoring a hand-off from %s for step %d: the pool named %s for session %s at %d",
                        sender, handoff.step_id, forward.from_node, forward.session_id[:8], forward.start_pos)
            return
        self.handoffs_used += 1
        self._input_arrived(handoff.step_id, sender, handoff.x, handoff.codec, handoff.scales)

    def _input_arrived(self, step_id: int, sender: str | None, x: torch.Tensor, codec: str, scales: torch.Tensor | None) -> None:
        """Queue the held step with its input; later copies of the input (a relayed one after a hand-off) are ignored."""
        waiting = self._awaiting.pop(step_id, None)
        if waiting is None:
            return
        forward = waiting[0]
        try:
            ready = replace(forward, x=x, codec=codec, scales=scales, from_node=None)
        except ProtocolViolation as exc:  # an input that does not fit its codec: the step fails alone
            self._send_step_error(step_id, exc)
            return
        self._queue.put_nowait(ready)

    def _expire_awaiting(self) -> None:
        """Give up steps whose input never came, telling the coordinator; forget stale early hand-offs."""
        now = time.monotonic()
        for step_id, (_, since) in list(self._awaiting.items()):
            if now - since > AWAIT_INPUT_S:
                del self._awaiting[step_id]
                self._send_step_error(step_id, ProtocolViolation(
                    f"the input of step {step_id} never arrived", hint="the upstream volunteer or the direct link failed"))
        for step_id, (_, _, since) in list(self._early.items()):
            if now - since > AWAIT_INPUT_S:
                del self._early[step_id]

    def _send_step_error(self, step_id: int, exc: ButterflyError) -> None:
        channel = self._channel
        if channel is not None:
            task = asyncio.create_task(channel.send(Error.from_exception(exc, step_id=step_id)))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _hand_on(self, step: Forward, outcome: EncodedTensor) -> bool:
        """Hand a step's output straight to the next stage's volunteer; whether it went."""
        if step.next_node is None or self.peers is None:
            return False
        sent = await self.peers.send(step.next_node, Handoff(
            step_id=step.next_step, session_id=step.session_id, start_pos=step.start_pos,
            x=outcome.data, codec=outcome.codec, scales=outcome.scales,
        ))
        self.handoffs_sent += sent
        return sent

    # --- measuring ---------------------------------------------------------------------

    async def _benchmark(self, channel: Channel, info: ModelInfo) -> None:
        """Time a real layer of the pool's model (cached per machine) and report the profile."""
        if not self.config.benchmark:
            await channel.send(ProfileUpdate(profile=self._scaled(replace(self.config.profile, node_id=self.node_id))))
            return
        try:
            from app.hardware.cache import cached_benchmark
            from app.hardware.probe import probe
            from app.hardware.profile import build_profile

            config = ModelConfig.from_hf(info.hf_config)
            dtype = _DTYPES[info.dtype]
            machine = await asyncio.to_thread(probe)
            bench = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                lambda: cached_benchmark(config, dtype=dtype, device="cpu", cache_path=self.config.benchmark_cache, info=machine),
            )
            cap = self.config.memory_cap_bytes if self.config.memory_cap_bytes is not None else self.config.profile.memory_bytes
            profile = build_profile(machine, bench, memory_cap_bytes=cap, name=self.config.name or self.config.profile.name)
            profile = replace(profile, node_id=self.node_id)
        except ButterflyError as exc:
            log.warning("benchmark failed (%s); reporting the quick estimate", exc)
            profile = replace(self.config.profile, node_id=self.node_id)
        await channel.send(ProfileUpdate(profile=self._scaled(profile)))

    def _scaled(self, profile: HardwareProfile) -> HardwareProfile:
        """Apply the debug slowdown to a measured profile, so the planner sees what the pool will."""
        if self.slowdown <= 1.0:
            return profile
        return replace(
            profile,
            seconds_per_layer=profile.seconds_per_layer * self.slowdown,
            prefill_seconds_per_layer=profile.prefill_seconds_per_layer * self.slowdown,
        )

    # --- loading ---------------------------------------------------------------------

    async def _load(self, channel: Channel, assign: Assign) -> None:
        try:
            started = time.perf_counter()
            if self._pool_public_key is None:
                raise ProtocolViolation("an assignment arrived before the pool proved its key")
            verify_assignment(self._pool_public_key, assign)
            shard = await self._fetch_and_build(channel, assign)
            self.shards[assign.assignment_id] = _LoadedShard(
                assign.assignment_id, shard, frozenset(t.sha256 for t in assign.tensors), max_tokens=assign.max_tokens
            )
            await channel.send(Ready(assignment_id=assign.assignment_id, load_seconds=time.perf_counter() - started))
            self._on_status(f"serving layers {assign.layers}")
        except ButterflyError as exc:
            log.error("could not load assignment %s: %s", assign.assignment_id, exc)
            await channel.fail(exc)
        except (ChannelClosed, ConnectionError, asyncio.CancelledError):
            pass

    async def _fetch_and_build(self, channel: Channel, assign: Assign) -> Shard:
        dtype = _DTYPES.get(assign.dtype)
        if dtype is None or dtype is torch.float16:
            raise ShardLoadFailed(f"compute dtype {assign.dtype} is not supported here", hint="use float32 or bfloat16")
        config = ModelConfig.from_hf(assign.hf_config)
        total = sum(t.nbytes for t in assign.tensors)
        self._check_memory(assign, dtype)
        done = 0
        last_report = 0.0
        tensors: dict[str, torch.Tensor] = {}
        loop = asyncio.get_running_loop()
        for spec in assign.tensors:
            known = self._tensors.get(spec.sha256)
            if known is not None and tuple(known.shape) == tuple(spec.shape):
                tensors[spec.name] = known  # held from an earlier assignment: verified then, no download
                done += spec.nbytes
                continue
            buf = bytearray(spec.nbytes)
            digest = hashlib.sha256()
            offsets = list(range(0, spec.nbytes, self.config.chunk_bytes))
            inflight: list[asyncio.Future[TensorChunk]] = []
            next_index = 0
            for index in range(len(offsets)):
                while next_index < len(offsets) and next_index < index + FETCH_WINDOW:
                    off = offsets[next_index]
                    length = min(self.config.chunk_bytes, spec.nbytes - off)
                    fut: asyncio.Future[TensorChunk] = loop.create_future()
                    self._chunks[(assign.assignment_id, spec.name, off)] = fut
                    inflight.append(fut)
                    await channel.send(FetchTensor(assignment_id=assign.assignment_id, name=spec.name, offset=off, length=length))
                    next_index += 1
                chunk = await asyncio.wait_for(inflight[index], 120)
                data = chunk.data.numpy().tobytes()
                off = offsets[index]
                if chunk.total != spec.nbytes or off + len(data) > spec.nbytes:
                    raise ShardLoadFailed(f"chunk of {spec.name} does not fit the assignment")
                buf[off : off + len(data)] = data
                digest.update(data)
                done += len(data)
                now = time.monotonic()
                if now - last_report > PROGRESS_EVERY_S:
                    last_report = now
                    await channel.send(LoadProgress(assignment_id=assign.assignment_id, done_bytes=done, total_bytes=total))
            if digest.hexdigest() != spec.sha256:
                raise ShardLoadFailed(
                    f"tensor {spec.name} does not match its hash in the assignment",
                    hint="the pool's weights or the transfer were tampered with; leave this pool",
                )
            src_dtype = _DTYPES.get(spec.dtype)
            if src_dtype is None:
                raise ShardLoadFailed(f"tensor {spec.name} has unsupported dtype {spec.dtype}")
            tensors[spec.name] = torch.frombuffer(buf, dtype=src_dtype).reshape(spec.shape)
            self._tensors[spec.sha256] = tensors[spec.name]
        await channel.send(LoadProgress(assignment_id=assign.assignment_id, done_bytes=total, total_bytes=total))
        return await loop.run_in_executor(
            self._executor, lambda: Shard(config, assign.layers, tensors, dtype=dtype)
        )

    def _check_memory(self, assign: Assign, dtype: torch.dtype) -> None:
        """Refuse an assignment whose weights would not fit what this machine offers.

        The pool plans within the memory we report, so this only trips for a pool that
        asks too much (or lies): nothing is allocated for it. One assignment must fit the
        cap in the compute dtype; all held assignments together at most twice the cap,
        since a re-plan loads the new layers before the old ones go.
        """
        cap = self.config.memory_cap_bytes if self.config.memory_cap_bytes is not None else self.config.profile.memory_bytes
        if cap <= 0:
            return
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = sum(max(t.nbytes, math.prod(t.shape) * itemsize) for t in assign.tensors)
        held = sum(
            t.numel() * t.element_size()
            for loaded in self.shards.values()
            for t in itertools.chain(loaded.shard.parameters(), loaded.shard.buffers())
        )
        if need > cap or need + held > 2 * cap:
            raise ShardLoadFailed(
                f"assignment {assign.assignment_id} needs {need / 2**30:.2f} GiB for layers {assign.layers} "
                f"(already holding {held / 2**30:.2f} GiB); this volunteer offers {cap / 2**30:.2f} GiB",
                hint="raise the memory cap, or this pool asks more than it should",
            )

    def _forget_unused_tensors(self) -> None:
        """Keep fetched tensors only while a loaded shard still uses them."""
        in_use = {sha for loaded in self.shards.values() for sha in loaded.hashes}
        self._tensors = {sha: t for sha, t in self._tensors.items() if sha in in_use}

    # --- serving ---------------------------------------------------------------------

    async def _compute_loop(self) -> None:
        """Run queued work in arrival order, packing waiting decode steps into one forward (see app.batching)."""
        loop = asyncio.get_running_loop()
        channel = self._channel
        assert channel is not None
        backlog: deque[Forward | EndSession | Unassign | None] = deque()
        while True:
            if not backlog:
                backlog.append(await self._queue.get())
            picked = await self._gather(backlog)
            batch = [backlog[i] for i in picked]
            for i in reversed(picked):
                del backlog[i]
            msg = batch[0]
            if msg is None:
                return
            if isinstance(msg, EndSession):
                for loaded in self.shards.values():
                    loaded.caches.pop(msg.session_id, None)
                    loaded.waves.pop(msg.session_id, None)
                continue
            if isinstance(msg, Unassign):
                self.shards.pop(msg.assignment_id, None)
                self._forget_unused_tensors()
                continue
            steps = [m for m in batch if isinstance(m, Forward)]
            outcomes, together, compute_s = await loop.run_in_executor(self._executor, self._run, steps)
            if self.slowdown > 1.0:
                await asyncio.sleep(compute_s * (self.slowdown - 1.0))
                compute_s *= self.slowdown
            ran = self.shards.get(steps[0].assignment_id)
            if ran is not None:
                ran.last_pass_s = compute_s
                wave = frozenset(step.session_id for step in steps)
                ran.waves.update((session, wave) for session in wave)
            try:
                for step, outcome in zip(steps, outcomes, strict=True):
                    if isinstance(outcome, ButterflyError):
                        await channel.send(Error.from_exception(outcome, step_id=step.step_id))
                        continue
                    self.steps += 1
                    handed_off = await self._hand_on(step, outcome.out)
                    await channel.send(Result(
                        step_id=step.step_id, session_id=step.session_id, compute_s=compute_s, y=outcome.out.data,
                        codec=outcome.out.codec, scales=outcome.out.scales, batch=together, handed_off=handed_off,
                        indices=outcome.indices,
                    ))
            except (ChannelClosed, ConnectionError):
                return

    async def _gather(self, backlog: deque[Forward | EndSession | Unassign | None]) -> tuple[int, ...]:
        """Move arrived messages into ``backlog`` and pick the next batch.

        A decode step whose last forward ran with other sessions (its *wave*) waits briefly
        for those sessions' steps, which the coordinator sends one by one; a prefill waits
        while other prefills keep arriving (see app.batching).
        """
        picked = self._pick(backlog)
        head = backlog[0]
        if not isinstance(head, Forward):
            return picked
        if head.x.shape[0] != 1:
            deadline = time.monotonic() + PREFILL_CAP_S
            while len(picked) < self.config.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    backlog.append(await asyncio.wait_for(self._queue.get(), min(left, PREFILL_GAP_S)))
                except TimeoutError:
                    break
                joined, picked = picked, self._pick(backlog)
                if len(picked) == len(joined):  # what came cannot join: run what we have
                    break
            return picked
        loaded = self.shards.get(head.assignment_id)
        if loaded is None:
            return picked
        wave = {s for s in loaded.waves.get(head.session_id, ()) if s in loaded.caches}
        target = min(len(wave), self.config.max_batch)

        def arrived(indices: tuple[int, ...]) -> int:
            return sum(1 for i in indices if isinstance(m := backlog[i], Forward) and m.session_id in wave)

        wait = gather_window_s(ready=arrived(picked), sessions=target, last_pass_s=loaded.last_pass_s)
        deadline = time.monotonic() + wait
        while arrived(picked) < target and len(picked) < self.config.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                backlog.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
            picked = self._pick(backlog)
        return picked

    def _pick(self, backlog: deque[Forward | EndSession | Unassign | None]) -> tuple[int, ...]:
        while not self._queue.empty():
            backlog.append(self._queue.get_nowait())
        window = [_batch_entry(m) for m in islice(backlog, 4 * self.config.max_batch)]
        return take_batch(window, max_batch=self.config.max_batch)

    def _run(self, steps: list[Forward]) -> tuple[list[_Answer | ButterflyError], int, float]:
        """Run forward steps on the compute thread: one answer or error per step, how many ran as one pass, seconds."""
        started = time.perf_counter()
        if len(steps) > 1:
            outcomes, together = self._step_batch(steps)
        else:
            outcomes, together = [_outcome(self._step, steps[0])], 1
        return outcomes, together, time.perf_counter() - started

    def _step(self, msg: Forward) -> _Answer:
        """Run one forward step alone; its answer, encoded for the wire."""
        loaded, cache, x = self._prepare(msg)
        try:
            y = loaded.shard(x, cache)
        except ValueError as exc:  # the runtime's word for input that does not fit this shard
            raise ProtocolViolation(f"forward input refused: {exc}") from None
        return self._answer(msg, loaded, cache, y)

    def _step_batch(self, steps: list[Forward]) -> tuple[list[_Answer | ButterflyError], int]:
        """Run decode steps of different sessions of one assignment as one packed forward.

        Returns each step's answer or error, in order, and how many ran together. A step
        that cannot start (unknown assignment, cache too short) fails alone; when the
        runtime refuses an input, no cache has changed yet, so each step is run alone
        and only the faulty one fails.
        """
        outcomes: list[_Answer | ButterflyError | None] = [None] * len(steps)
        ready: list[tuple[int, _LoadedShard, KVCache, torch.Tensor]] = []
        for i, msg in enumerate(steps):
            try:
                ready.append((i, *self._prepare(msg)))
            except ButterflyError as exc:
                outcomes[i] = exc
        together = len(ready)
        if ready:
            shard = ready[0][1].shard
            try:
                ys = shard.forward_batch([(x, cache) for _, _, cache, x in ready])
            except (ValueError, ButterflyError):
                together = 1
                for i, *_ in ready:
                    outcomes[i] = _outcome(self._step, steps[i])
            else:
                for (i, loaded, cache, _), y in zip(ready, ys, strict=True):
                    try:
                        outcomes[i] = self._answer(steps[i], loaded, cache, y)
                    except ButterflyError as exc:
                        outcomes[i] = exc
        return [o for o in outcomes if o is not None], together

    def _prepare(self, msg: Forward) -> tuple[_LoadedShard, KVCache, torch.Tensor]:
        """The step's shard, its session cache cut to ``start_pos``, and its input in the compute dtype."""
        loaded = self.shards.get(msg.assignment_id)
        if loaded is None:
            raise ProtocolViolation(f"forward for unknown assignment {msg.assignment_id}")
        x = decode(EncodedTensor(msg.codec, msg.x, msg.scales), dtype=loaded.shard.dtype)
        check_forward_input(  # before any cache is created or cut: a refused step changes nothing
            x, layers=loaded.shard.layers, hidden_size=loaded.shard.config.hidden_size,
            vocab_size=loaded.shard.config.vocab_size, max_tokens=loaded.max_tokens, start_pos=msg.start_pos,
        )
        cache = loaded.caches.get(msg.session_id)
        if cache is None:
            if len(loaded.caches) >= self.config.max_sessions:
                raise ShardLoadFailed(f"more than {self.config.max_sessions} sessions at once")
            cache = loaded.caches[msg.session_id] = loaded.shard.new_cache()
        if cache.length > msg.start_pos:
            cache.truncate(msg.start_pos)
        elif cache.length < msg.start_pos:
            raise ProtocolViolation(
                f"session {msg.session_id} step starts at {msg.start_pos} but only {cache.length} tokens are cached"
            )
        return loaded, cache, x

    def _answer(self, msg: Forward, loaded: _LoadedShard, cache: KVCache, y: torch.Tensor) -> _Answer:
        """Refuse non-finite output (forgetting the step's cache entries); else encode it in the step's codec
        (a last stage's logits: only the top ``logits_top`` of them when the step asks so)."""
        y = perturbed(y, self.config.perturb)
        if not bool(torch.isfinite(y).all()):
            cache.truncate(msg.start_pos)
            raise ShardLoadFailed(
                "this shard produced non-finite values", hint="the weights or the input are corrupt"
            )
        if not loaded.shard.layers.is_last:
            return _Answer(encode(y, msg.codec))
        if msg.logits_top:
            values, ids = top_logits(y, msg.logits_top)
            return _Answer(encode(values, msg.logits_codec), ids)
        return _Answer(encode(y, msg.logits_codec))


def perturbed(y: torch.Tensor, scale: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Debug only (``--perturb``): ``y`` plus Gaussian noise of ``scale`` times each row's RMS.

    Returns ``y`` itself when ``scale`` is 0. It makes a volunteer wrong on purpose, to show
    the pool's result validation catching and quarantining it.
    """
    if scale <= 0.0:
        return y
    values = y.float()
    rms = values.pow(2).mean(dim=-1, keepdim=True).sqrt()
    noise = torch.randn(values.shape, generator=generator) * rms * scale
    return (values + noise).to(y.dtype)


def _batch_entry(msg: Forward | EndSession | Unassign | None) -> Step | None:
    """How batching sees a queued message: a step, or a barrier."""
    if isinstance(msg, Forward):
        return Step(msg.assignment_id, msg.session_id, int(msg.x.shape[0]))
    return None


def _outcome(run: Callable[[Forward], _Answer], msg: Forward) -> _Answer | ButterflyError:
    try:
        return run(msg)
    except ButterflyError as exc:
        return exc


class VolunteerService:
    """Keeps a volunteer in its pool: reconnects with backoff and jitter until told to leave.

    A connection that ends because the coordinator went away (closed, restarted, said
    goodbye while shutting down) is retried after :func:`core.backoff.backoff_delay`;
    a finished drain ends the service; a refusal (bad invite, banned key, impostor pool)
    is raised, since retrying cannot fix it.
    """

    def __init__(
        self,
        config: VolunteerConfig,
        *,
        on_status: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.config = config
        self._on_status = on_status or (lambda s: None)
        self._rng = rng or random.Random()
        self._max_attempts = max_attempts
        self._leaving = False
        self._leave = asyncio.Event()
        self.current: Volunteer | None = None
        self.connections = 0

    def request_drain(self) -> None:
        """Leave the pool for good (after draining the current connection)."""
        self._leaving = True
        self._leave.set()
        if self.current is not None:
            self.current.request_drain()

    async def run(self) -> str:
        """Serve until drained (returns "drained") or out of attempts (returns the last end reason)."""
        attempt = 0
        reason = "closed"
        while not self._leaving:
            volunteer = Volunteer(self.config, on_status=self._on_status)
            self.current = volunteer
            try:
                await volunteer.run()
                reason = volunteer.end_reason
                self.connections += 1
                attempt = 0 if volunteer.steps or volunteer.shards else attempt
            except AuthFailed:
                raise
            except (ConfigError, ChannelClosed, ProtocolViolation, ConnectionError, OSError) as exc:
                reason = f"error: {exc}"
                log.warning("connection to the pool ended: %s", exc)
            if reason == "drained" or self._leaving:
                return "drained"
            if self._max_attempts is not None and attempt >= self._max_attempts:
                return reason
            delay = backoff_delay(attempt, rng=self._rng)
            attempt += 1
            self._on_status(f"reconnecting in {delay:.1f} s")
            try:
                await asyncio.wait_for(self._leave.wait(), delay)
            except TimeoutError:
                pass
        return "drained"
