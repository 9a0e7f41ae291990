"""The headless volunteer: dial out to a coordinator, prove who we are, load our layers, serve.

One :class:`Volunteer` holds one websocket to one pool. The reader task answers
heartbeats and weight chunks at once; forward steps go through a queue to a single
compute thread, so torch never blocks the event loop and steps of a session stay in
order. Weights arrive from the coordinator tensor by tensor and are checked against the
sha256 in the assignment before use; nothing from the pool is ever executed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import torch

from core.backoff import backoff_delay
from core.errors import AuthFailed, ButterflyError, ConfigError, ProtocolViolation, ShardLoadFailed
from core.identity import Identity, auth_transcript, fingerprint, parse_invite, verify_signature
from core.model.config import ModelConfig
from core.model.kv_cache import KVCache
from core.model.shard import Shard
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
    FetchTensor,
    Forward,
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
from core.transport import Channel, ChannelClosed
from core.types import HardwareProfile

log = logging.getLogger(__name__)

APP_VERSION = "0.1.0"
FETCH_WINDOW = 4
PROGRESS_EVERY_S = 0.25
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True, kw_only=True)
class VolunteerConfig:
    """How this volunteer joins.

    ``url`` is the coordinator's websocket (taken from the invite when omitted);
    ``data_dir`` holds this install's key and the pools it has pinned; ``slowdown``
    multiplies this volunteer's compute time (a debug knob for tests and demos).
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


@dataclass(slots=True)
class _LoadedShard:
    assignment_id: str
    shard: Shard
    hashes: frozenset[str] = frozenset()
    caches: dict[str, KVCache] = field(default_factory=dict)


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
        self.slowdown = config.slowdown
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

    # --- pinning ---------------------------------------------------------------------

    def _pins_path(self) -> Path:
        return self.config.data_dir / "pools.json"

    def _pinned_pool_id(self) -> str | None:
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
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(
                    self.url, max_msg_size=Limits().max_frame_bytes, compress=0, autoping=True, proxy=None
                )
            except (aiohttp.ClientError, OSError) as exc:
                raise ConfigError(
                    f"cannot reach the coordinator at {self.url}: {exc}",
                    hint="check the address and that the coordinator is running",
                ) from exc
            self._channel = channel = Channel(ws, ProtocolConnection(Role.VOLUNTEER))
            try:
                await self._handshake(channel)
                self._on_status("connected")
                worker = asyncio.create_task(self._compute_loop(), name="compute")
                try:
                    await self._read_loop(channel)
                finally:
                    await self._queue.put(None)
                    worker.cancel()
            except ButterflyError as exc:
                if not isinstance(exc, ChannelClosed):
                    await channel.fail(exc)
                raise
            finally:
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
                if isinstance(msg, Forward | EndSession):
                    self._queue.put_nowait(msg)
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
            shard = await self._fetch_and_build(channel, assign)
            self.shards[assign.assignment_id] = _LoadedShard(
                assign.assignment_id, shard, frozenset(t.sha256 for t in assign.tensors)
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

    def _forget_unused_tensors(self) -> None:
        """Keep fetched tensors only while a loaded shard still uses them."""
        in_use = {sha for loaded in self.shards.values() for sha in loaded.hashes}
        self._tensors = {sha: t for sha, t in self._tensors.items() if sha in in_use}

    # --- serving ---------------------------------------------------------------------

    async def _compute_loop(self) -> None:
        loop = asyncio.get_running_loop()
        channel = self._channel
        assert channel is not None
        while True:
            msg = await self._queue.get()
            if msg is None:
                return
            if isinstance(msg, EndSession):
                for loaded in self.shards.values():
                    loaded.caches.pop(msg.session_id, None)
                continue
            if isinstance(msg, Unassign):
                self.shards.pop(msg.assignment_id, None)
                self._forget_unused_tensors()
                continue
            try:
                y, compute_s = await loop.run_in_executor(self._executor, self._step, msg)
            except ButterflyError as exc:
                await channel.send(Error.from_exception(exc, step_id=msg.step_id))
                continue
            if self.slowdown > 1.0:
                await asyncio.sleep(compute_s * (self.slowdown - 1.0))
                compute_s *= self.slowdown
            self.steps += 1
            try:
                await channel.send(Result(step_id=msg.step_id, session_id=msg.session_id, compute_s=compute_s, y=y))
            except (ChannelClosed, ConnectionError):
                return

    def _step(self, msg: Forward) -> tuple[torch.Tensor, float]:
        """Run one forward step on the compute thread."""
        started = time.perf_counter()
        loaded = self.shards.get(msg.assignment_id)
        if loaded is None:
            raise ProtocolViolation(f"forward for unknown assignment {msg.assignment_id}")
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
        try:
            y = loaded.shard(msg.x, cache)
        except ValueError as exc:  # the runtime's word for input that does not fit this shard
            raise ProtocolViolation(f"forward input refused: {exc}") from None
        if not bool(torch.isfinite(y).all()):
            cache.truncate(msg.start_pos)
            raise ShardLoadFailed(
                "this shard produced non-finite values", hint="the weights or the input are corrupt"
            )
        return y, time.perf_counter() - started


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
