"""One connected volunteer, as the coordinator sees it.

A :class:`VolunteerLink` owns the volunteer's websocket channel after authentication:
it sends assignments and forward steps, answers weight fetches from the model store,
resolves pending steps when results arrive, and measures the link's round-trip time
with heartbeats. When the socket closes, every pending step fails with
:class:`StageFailed` so no caller waits forever.

Activations travel in a codec chosen per link (:func:`choose_codec`): ``auto`` keeps them
exact (the compute dtype) on a fast link and sends float16 on a slow one. Results are
decoded on arrival, so callers always see plain tensors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from core.errors import ButterflyError, ConfigError, ProtocolViolation, StageFailed
from core.protocol.bounds import check_result_output
from core.protocol.codec import EncodedTensor, decode, encode
from core.protocol.top_logits import check_top_logits, densify
from core.protocol.messages import (
    Assign,
    LinkProbe,
    LinkProbeAck,
    ModelInfo,
    ProfileUpdate,
    Bye,
    Drain,
    EndSession,
    Error,
    Feed,
    FetchTensor,
    Forward,
    Heartbeat,
    HeartbeatAck,
    LoadProgress,
    Ready,
    Result,
    SetSlowdown,
    TensorChunk,
    Unassign,
)
from core.transport import Channel, ChannelClosed
from core.types import HardwareProfile, LayerRange, NodeId
from server.config import LOGITS_CODECS, WIRE_CODECS
from server.health import StepTimes, stall_timeout_s

if TYPE_CHECKING:
    from core.store.store import StoredModel

log = logging.getLogger(__name__)

FAST_LINK_BYTES_PER_S: float = 50e6
"""Measured throughput from which ``auto`` keeps activations exact (gigabit LAN, loopback)."""


def choose_codec(setting: str, bandwidth_bytes_per_s: float) -> str:
    """The activation codec of a link: ``setting`` itself, or for ``auto`` the rule below.

    ``auto``: ``model`` (exact) when the link's measured throughput is at least
    :data:`FAST_LINK_BYTES_PER_S` or unknown (``inf``: not measured), else ``float16``, which
    halves the bytes of fp32 hidden states at a relative error of 2**-11.
    """
    if setting not in WIRE_CODECS:
        raise ConfigError(f"unknown wire codec {setting!r}", hint=f"use one of {', '.join(WIRE_CODECS)}")
    if setting != "auto":
        return setting
    return "model" if bandwidth_bytes_per_s >= FAST_LINK_BYTES_PER_S else "float16"


@dataclass(slots=True)
class LoadState:
    """Progress of one assignment on one volunteer."""

    assignment_id: str
    layers: LayerRange
    total_bytes: int
    cost_layers: float = 0.0  # compute cost in decoder-layer equivalents (the LM head counts too)
    done_bytes: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    load_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    future: asyncio.Future[StepResult]
    sent_at: float
    tokens: int
    layers: float
    replay: bool = False  # replayed steps run back to back: not a measure of serving speed
    stage: LayerRange | None = None  # the layers that computed it: what its output must look like
    logits_top: int = 0  # top logits asked for (0: all)


@dataclass(frozen=True, slots=True)
class StepResult:
    """A stage's answer to one forward step."""

    y: torch.Tensor
    compute_s: float
    round_trip_s: float
    handed_off: bool = False  # the stage also handed ``y`` straight to the next stage's volunteer


class VolunteerLink:
    """The coordinator's handle on one authenticated volunteer."""

    def __init__(
        self,
        channel: Channel,
        *,
        node_id: NodeId,
        name: str,
        os_name: str,
        profile: HardwareProfile,
        model: StoredModel,
        step_timeout_s: float,
        on_event: Callable[[VolunteerLink, object], None],
        wire_codec: str = "auto",
        logits_codec: str = "model",
    ) -> None:
        choose_codec(wire_codec, 0.0)  # refuse an unknown setting now
        if logits_codec not in LOGITS_CODECS:
            raise ConfigError(f"unknown logits codec {logits_codec!r}", hint=f"use one of {', '.join(LOGITS_CODECS)}")
        self.wire_codec = wire_codec
        self.logits_codec = logits_codec
        self.channel = channel
        self.node_id = node_id
        self.name = name
        self.os_name = os_name
        self.profile = profile
        self.model = model
        self.step_timeout_s = step_timeout_s
        self._on_event = on_event
        self._pending: dict[int, _Pending] = {}
        self._probes: dict[int, asyncio.Future[float]] = {}
        self.times = StepTimes()
        self.profiled = asyncio.Event()
        self.stall_ceiling_s = step_timeout_s
        self._step_ids = itertools.count(1)
        self._hb_seq = itertools.count(1)
        self.loads: dict[str, LoadState] = {}
        self.rtt_s: float | None = None
        self.last_seen = time.monotonic()
        self.joined_at = time.time()
        self.draining = False
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.steps_served = 0
        self.tokens_served = 0
        self.compute_s_total = 0.0
        self.batched_steps = 0  # steps the volunteer ran packed with other sessions' steps
        self.forward_passes = 0.0  # steps weighted 1/batch: steps_served / forward_passes is the mean batch
        self.handed_off_steps = 0  # steps whose output the volunteer handed straight to the next stage

    @property
    def codec(self) -> str:
        """The activation codec this link uses now (see :func:`choose_codec`)."""
        return choose_codec(self.wire_codec, self.profile.bandwidth_bytes_per_s)

    # --- outgoing -------------------------------------------------------------------

    async def assign(self, msg: Assign, *, cost_layers: float | None = None) -> LoadState:
        """Send an assignment; the returned state's ``ready`` is set when the shard is loaded.

        ``cost_layers`` is the stage's compute in layer equivalents (default: its layer count),
        so observed step times compare with the benchmark's seconds per layer.
        """
        cost = float(len(msg.layers)) if cost_layers is None else cost_layers
        state = LoadState(msg.assignment_id, msg.layers, sum(t.nbytes for t in msg.tensors), cost)
        self.loads[msg.assignment_id] = state
        await self.channel.send(msg)
        return state

    def step_timeout(self, *, tokens: int, layers: float, queued_s: float = 0.0) -> float:
        """How long a step may take before this volunteer counts as stalled.

        ``queued_s`` is the expected time of the steps already waiting on this volunteer
        (other sessions'): a step queued behind them is late by that much, not stalled.
        """
        expected = self.times.expected_s(tokens=tokens, layers=layers, fallback_s_per_layer=self.profile.seconds_per_layer)
        return stall_timeout_s(expected + queued_s, rtt_s=self.rtt_s or 0.0, ceiling_s=self.stall_ceiling_s)

    def _queued_s(self) -> float:
        """Expected seconds of the steps this volunteer has not answered yet."""
        fallback = self.profile.seconds_per_layer
        return sum(self.times.expected_s(tokens=p.tokens, layers=p.layers, fallback_s_per_layer=fallback)
                   for p in self._pending.values())

    async def forward(self, *, session_id: str, assignment_id: str, start_pos: int, x: torch.Tensor,
                      logits_top: int = 0) -> StepResult:
        """Run one step on this volunteer's stage and wait for its output.

        ``logits_top`` > 0 asks a last stage for only that many largest logits (the result
        is dense again: ``-inf`` elsewhere, see :mod:`core.protocol.top_logits`). Raises
        :class:`StageFailed` when the volunteer is gone, reports an error for the step, or
        stalls (then the link is closed: a frozen volunteer is dropped).
        """
        (result,) = await self.forward_many(session_id=session_id, assignment_id=assignment_id, steps=[(start_pos, x)],
                                            logits_top=logits_top)
        return result

    async def forward_many(
        self, *, session_id: str, assignment_id: str, steps: list[tuple[int, torch.Tensor]], replay: bool = False,
        logits_top: int = 0,
    ) -> list[StepResult]:
        """Send several steps of one session back to back, then wait for all results.

        ``replay`` marks steps that rebuild a cache: they do not count as serving speed.
        """
        ids: list[int] = []
        timeout = 0.0
        queued_s = self._queued_s()  # other sessions' steps ahead of ours at the volunteer
        try:
            for start_pos, x in steps:
                step_id = self.open_step(assignment_id=assignment_id, tokens=int(x.shape[0]), logits_top=logits_top,
                                         replay=replay or len(steps) > 1)
                ids.append(step_id)
                pending = self._pending[step_id]
                timeout += self.step_timeout(tokens=pending.tokens, layers=pending.layers, queued_s=queued_s)
                queued_s = 0.0  # counted once, with the first step
                await self.send_step(step_id, session_id=session_id, assignment_id=assignment_id, start_pos=start_pos,
                                     x=x, logits_top=logits_top)
            futures = [self._pending[i].future for i in ids]
            return list(await asyncio.wait_for(asyncio.gather(*futures), min(timeout, self.stall_ceiling_s * len(ids))))
        except TimeoutError:
            raise self._stalled(timeout) from None
        except (ChannelClosed, ConnectionError) as exc:
            raise StageFailed(f"volunteer {self.name} disconnected: {exc}") from exc
        finally:
            for i in ids:
                self.abandon(i)

    def _stalled(self, limit_s: float) -> StageFailed:
        """Close this link as stalled (in the background) and return the error to raise."""
        self.close_reason = f"stalled: no answer within {limit_s:.1f} s"
        asyncio.create_task(self.channel.close(4002, "stalled"))
        return StageFailed(f"volunteer {self.name} stalled (no answer within {limit_s:.1f} s)")

    # --- direct links: the steps of one token, sent to every stage at once ----------

    def open_step(self, *, assignment_id: str, tokens: int, logits_top: int = 0, replay: bool = False) -> int:
        """Register a step to be sent with :meth:`send_step`; its id, for the upstream stage's ``next_step``.

        Every opened step ends with :meth:`wait_step` or :meth:`abandon`. ``replay`` marks a
        step that rebuilds a cache: its time is not a measure of serving speed.
        """
        if self.closed.is_set():
            raise StageFailed(f"volunteer {self.name} is gone: {self.close_reason}")
        state = self.loads.get(assignment_id)
        step_id = next(self._step_ids)
        self._pending[step_id] = _Pending(
            asyncio.get_running_loop().create_future(), time.perf_counter(), tokens,
            state.cost_layers if state is not None else 1.0, replay, state.layers if state is not None else None,
            logits_top,
        )
        return step_id

    async def send_step(
        self, step_id: int, *, session_id: str, assignment_id: str, start_pos: int, x: torch.Tensor | None,
        from_node: str | None = None, next_node: str | None = None, next_step: int = 0, logits_top: int = 0,
    ) -> None:
        """Send an opened step: with ``x``, or (``x`` None) naming ``from_node`` as the volunteer
        that hands the input over; ``next_node``/``next_step``: where the output goes on directly."""
        try:
            if x is None:
                await self.channel.send(Forward(
                    step_id=step_id, session_id=session_id, assignment_id=assignment_id, start_pos=start_pos,
                    x=torch.empty(0), logits_codec=self.logits_codec, from_node=from_node,
                    next_node=next_node, next_step=next_step, logits_top=logits_top,
                ))
                return
            enc = encode(x, self.codec)
            await self.channel.send(Forward(
                step_id=step_id, session_id=session_id, assignment_id=assignment_id, start_pos=start_pos,
                x=enc.data, codec=enc.codec, scales=enc.scales, logits_codec=self.logits_codec,
                next_node=next_node, next_step=next_step, logits_top=logits_top,
            ))
        except (ChannelClosed, ConnectionError) as exc:
            raise StageFailed(f"volunteer {self.name} disconnected: {exc}") from exc

    async def feed(self, step_id: int, x: torch.Tensor) -> None:
        """Relay the input of a step whose upstream could not hand it over (a no-op once it is answered)."""
        pending = self._pending.get(step_id)
        if pending is None or pending.future.done():
            return
        enc = encode(x, self.codec)
        try:
            await self.channel.send(Feed(step_id=step_id, x=enc.data, codec=enc.codec, scales=enc.scales))
        except ProtocolViolation:
            pass  # the answer arrived while we encoded: nothing left to feed
        except (ChannelClosed, ConnectionError) as exc:
            raise StageFailed(f"volunteer {self.name} disconnected: {exc}") from exc

    async def wait_step(self, step_id: int, *, refeed: torch.Tensor | None = None) -> StepResult:
        """Wait for an opened step's result; the step is closed afterwards, whatever happens.

        The stall clock starts now (the caller waits for the upstream stage first). With
        ``refeed`` (the input the upstream said it handed over), a step not answered within
        half the stall time is fed that input by relay, and the volunteer counts as stalled
        only when the whole stall time passes: a hand-off lost on a direct link that broke
        must not cost a healthy volunteer its place, nor delay noticing a frozen one.
        """
        pending = self._pending.get(step_id)
        if pending is None:
            raise StageFailed(f"step {step_id} on volunteer {self.name} was never opened")
        timeout = limit = self.step_timeout(tokens=pending.tokens, layers=pending.layers, queued_s=self._queued_s())
        try:
            if refeed is not None:
                try:
                    return await asyncio.wait_for(asyncio.shield(pending.future), timeout / 2)
                except TimeoutError:
                    log.info("volunteer %s: no answer %.1f s after a hand-off; relaying the input", self.name, timeout / 2)
                    await self.feed(step_id, refeed)
                    timeout /= 2
            return await asyncio.wait_for(pending.future, timeout)
        except TimeoutError:
            raise self._stalled(limit) from None
        finally:
            self.abandon(step_id)

    def abandon(self, step_id: int) -> None:
        """Stop waiting for a step (its answer, if it comes, is dropped)."""
        pending = self._pending.pop(step_id, None)
        if pending is not None and not pending.future.done():
            pending.future.cancel()

    async def send_model_info(self, *, model_id: str, model_name: str, hf_config: dict, dtype: str) -> None:
        """Tell the volunteer which model the pool runs, so it can benchmark a real layer of it."""
        await self.channel.send(ModelInfo(model_id=model_id, model_name=model_name, hf_config=hf_config, dtype=dtype))

    async def measure_link(self, *, probe_bytes: int = 1 * 2**20, timeout_s: float = 10.0) -> None:
        """Measure round-trip time and throughput with a tiny and a large probe (best of two)."""
        try:
            rtts, bigs = [], []
            for _ in range(2):
                rtts.append(await self._probe(1, timeout_s))
                bigs.append(await self._probe(probe_bytes, timeout_s))
            rtt = min(rtts)
            transfer = max(min(bigs) - rtt, 1e-6)
            self.rtt_s = rtt
            self.profile = replace(self.profile, rtt_s=rtt, bandwidth_bytes_per_s=probe_bytes / transfer)
        except (TimeoutError, ChannelClosed, ConnectionError, ProtocolViolation):
            log.info("could not measure the link to %s", self.name)

    async def _probe(self, nbytes: int, timeout_s: float) -> float:
        seq = next(self._hb_seq)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._probes[seq] = fut
        try:
            payload = torch.zeros(nbytes, dtype=torch.uint8)
            await self.channel.send(LinkProbe(seq=seq, sent_at=time.monotonic(), payload=payload))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._probes.pop(seq, None)

    async def end_session(self, session_id: str) -> None:
        """Tell the volunteer it may free the session's KV cache (best effort)."""
        if not self.closed.is_set():
            try:
                await self.channel.send(EndSession(session_id=session_id))
            except Exception:  # noqa: BLE001 - a closed link has nothing to free
                pass

    async def unassign(self, assignment_id: str) -> None:
        """Tell the volunteer to drop an assignment it no longer serves (best effort)."""
        self.loads.pop(assignment_id, None)
        if not self.closed.is_set():
            try:
                await self.channel.send(Unassign(assignment_id=assignment_id))
            except Exception:  # noqa: BLE001
                pass

    async def set_slowdown(self, factor: float) -> None:
        await self.channel.send(SetSlowdown(factor=factor))

    async def heartbeat(self) -> None:
        await self.channel.send(Heartbeat(seq=next(self._hb_seq), sent_at=time.monotonic()))

    # --- incoming -------------------------------------------------------------------

    async def serve(self) -> None:
        """Read messages until the volunteer leaves; then fail whatever is pending."""
        try:
            while True:
                msg = await self.channel.recv()
                self.last_seen = time.monotonic()
                await self._dispatch(msg)
        except ChannelClosed as exc:
            self.close_reason = str(exc)
        except ProtocolViolation as exc:
            self.close_reason = f"protocol violation: {exc}"
            log.warning("volunteer %s: %s", self.name, exc)
        except ButterflyError as exc:
            self.close_reason = str(exc)
            await self.channel.fail(exc)
        finally:
            self._shutdown()

    async def _dispatch(self, msg: object) -> None:
        if isinstance(msg, Result):
            pending = self._pending.get(msg.step_id)
            if pending is None:
                return  # a step we gave up on answered late: drop it
            self.steps_served += 1
            self.tokens_served += pending.tokens
            self.compute_s_total += msg.compute_s / msg.batch  # a batch's time is shared by its steps
            self.forward_passes += 1.0 / msg.batch
            if msg.handed_off:
                self.handed_off_steps += 1
            if msg.batch > 1:
                self.batched_steps += 1
            elif not pending.replay:  # a batched step's time is not one step's: it would skew the speed seen
                self.times = self.times.observe(compute_s=msg.compute_s, tokens=pending.tokens, layers=pending.layers)
            y = decode(EncodedTensor(msg.codec, msg.y, msg.scales), dtype=msg.y.dtype if msg.codec == "model" else torch.float32)
            config = self.model.config
            if msg.indices is not None:  # top logits only: checked, then made dense (-inf elsewhere)
                if pending.stage is None or not pending.stage.is_last or not pending.logits_top:
                    raise ProtocolViolation(f"volunteer {self.name} sent top logits for a step that did not ask for them")
                check_top_logits(y, msg.indices, vocab_size=config.vocab_size, tokens=pending.tokens, k=pending.logits_top)
                y = densify(y, msg.indices, config.vocab_size)
            elif pending.stage is not None:  # a wrong shape, dtype or a NaN closes the link: the stage is replaced
                check_result_output(y, layers=pending.stage, hidden_size=config.hidden_size,
                                    vocab_size=config.vocab_size, tokens=pending.tokens)
            if not pending.future.done():
                pending.future.set_result(StepResult(y, msg.compute_s, time.perf_counter() - pending.sent_at, msg.handed_off))
        elif isinstance(msg, FetchTensor):
            await self._serve_fetch(msg)
        elif isinstance(msg, LoadProgress):
            state = self.loads.get(msg.assignment_id)
            if state is not None:
                state.done_bytes = msg.done_bytes
            self._on_event(self, msg)
        elif isinstance(msg, Ready):
            state = self.loads.get(msg.assignment_id)
            if state is not None:
                state.done_bytes = state.total_bytes
                state.load_seconds = msg.load_seconds
                state.ready.set()
            self._on_event(self, msg)
        elif isinstance(msg, ProfileUpdate):
            measured = (self.profile.rtt_s, self.profile.bandwidth_bytes_per_s)
            self.profile = replace(msg.profile, node_id=self.node_id, rtt_s=measured[0], bandwidth_bytes_per_s=measured[1])
            self.profiled.set()
            self._on_event(self, msg)
        elif isinstance(msg, LinkProbeAck):
            probe = self._probes.get(msg.seq)
            if probe is not None and not probe.done():
                probe.set_result(max(0.0, time.monotonic() - msg.sent_at))
        elif isinstance(msg, HeartbeatAck):
            self.rtt_s = max(0.0, time.monotonic() - msg.sent_at)
        elif isinstance(msg, Heartbeat):
            await self.channel.send(HeartbeatAck(seq=msg.seq, sent_at=msg.sent_at))
        elif isinstance(msg, Drain):
            self.draining = True
            self._on_event(self, msg)
        elif isinstance(msg, Error):
            pending = self._pending.get(msg.step_id) if msg.step_id is not None else None
            if pending is not None:
                if not pending.future.done():
                    pending.future.set_exception(StageFailed(f"volunteer {self.name} failed a step: {msg.message}", hint=msg.hint))
                return
            log.warning("volunteer %s reported: %s", self.name, msg.message)
            self._on_event(self, msg)
            if msg.step_id is None:
                raise ChannelClosed(f"volunteer reported a fatal error: {msg.message}", code=1011)
        elif isinstance(msg, Bye):
            raise ChannelClosed(f"volunteer said goodbye: {msg.reason}", code=1000)

    async def _serve_fetch(self, msg: FetchTensor) -> None:
        state = self.loads.get(msg.assignment_id)
        entry = self.model.manifest.tensors.get(msg.name)
        if state is None or entry is None:
            raise ProtocolViolation(f"fetch of {msg.name!r} outside assignment {msg.assignment_id!r}")
        end = msg.offset + msg.length
        if msg.length <= 0 or end > entry.nbytes:
            raise ProtocolViolation(f"fetch of bytes [{msg.offset}, {end}) outside tensor {msg.name} ({entry.nbytes} bytes)")
        view = self.model.tensor_bytes(msg.name)[msg.offset : end]
        data = torch.frombuffer(bytearray(view), dtype=torch.uint8)
        await self.channel.send(
            TensorChunk(assignment_id=msg.assignment_id, name=msg.name, offset=msg.offset, total=entry.nbytes, data=data)
        )

    def _shutdown(self) -> None:
        self.closed.set()
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(StageFailed(f"volunteer {self.name} disconnected: {self.close_reason}"))
        self._pending.clear()
        for probe in self._probes.values():
            if not probe.done():
                probe.set_exception(ChannelClosed("closed"))
        self._on_event(self, "closed")
