"""One generation request driven through a pipeline, token by token — surviving failures.

The coordinator tokenizes, sends the prompt through the stages (prefill), samples each
next token from the last stage's logits, and loops (decode). Text is detokenized
incrementally and held back where it could still become a stop string.

Every stage's inputs are recorded per session (:class:`SessionTrace`), keyed by the
layer where they enter and the position where each step starts. When the session has to
move — its pipeline lost a volunteer, or the pool re-planned — it takes a new pipeline
and :func:`rebuild` replays, stage by stage, exactly the recorded steps into every stage
that does not already hold the session's cache, in the same chunks as the first time,
so the rebuilt caches equal the lost ones and greedy output does not change. Sampling
happens here with the request's own seeded generator, so a seeded request is also
unchanged by a recovery.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import torch

from core.errors import ConfigError, PoolUnavailable, RequestFailed, StageFailed
from core.types import LayerRange
from core.store.tokenizer import TextTokenizer
from server.pool import LivePipeline, Pool
from server.verifier import Auditor
from server.sampling import Sampler, SamplingParams, StopStringMatcher, logits_needed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Usage:
    """Counts and timings of one finished request."""

    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float
    recoveries: int = 0
    replayed_steps: int = 0


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A piece of the answer: the sampled token and the text it releases.

    The last event of a request has ``finish_reason`` set ("stop" or "length") and
    ``usage`` filled; its ``token_id`` is -1 when it carries no new token.
    """

    token_id: int
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class SessionTrace:
    """Each layer boundary's inputs of one session: ``{layer: {start_pos: tensor}}``.

    Only complete boundaries are kept: after a move, the boundaries of the new pipeline.
    """

    inputs: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)

    def record(self, layer: int, start_pos: int, x: torch.Tensor) -> None:
        self.inputs.setdefault(layer, {})[start_pos] = x

    def steps(self, layer: int, *, before: int) -> list[tuple[int, torch.Tensor]]:
        """The recorded steps entering ``layer`` that start before position ``before``, in order."""
        recorded = self.inputs.get(layer, {})
        return [(pos, recorded[pos]) for pos in sorted(recorded) if pos < before]

    def keep_only(self, layers: Sequence[int]) -> None:
        self.inputs = {layer: steps for layer, steps in self.inputs.items() if layer in layers}


async def run_step(
    pipeline: LivePipeline, session_id: str, start_pos: int, x: torch.Tensor, trace: SessionTrace | None = None,
    *, auditor: Auditor | None = None, logits_top: int = 0,
) -> torch.Tensor:
    """Send ``x`` through every stage of ``pipeline``; return the last stage's logits.

    With an ``auditor``, each stage's output is checked (when its volunteer is due for a
    check) before the next stage gets it; a wrong one is replaced by the coordinator's.
    ``logits_top`` > 0: the last stage returns only that many largest logits (``-inf``
    elsewhere in the returned rows; see :func:`server.sampling.logits_needed`).
    """
    for stage in pipeline.stages:
        if trace is not None:
            trace.record(stage.start, start_pos, x)
        try:
            result = await stage.link.forward(
                session_id=session_id, assignment_id=stage.assignment_id, start_pos=start_pos, x=x,
                logits_top=logits_top if stage is pipeline.stages[-1] else 0,
            )
        except StageFailed as exc:
            exc.node_id = exc.node_id or stage.link.node_id
            exc.link = stage.link  # type: ignore[attr-defined] - the very connection that failed
            raise
        x = result.y if auditor is None else await auditor.check(
            stage.link, session_id=session_id, layers=LayerRange(stage.start, stage.end, pipeline.stages[-1].end),
            start_pos=start_pos, x=x, y=result.y, trace=trace,
        )
    return x


async def run_step_direct(
    pipeline: LivePipeline, session_id: str, start_pos: int, x: torch.Tensor, trace: SessionTrace | None = None,
    *, auditor: Auditor | None = None, logits_top: int = 0,
) -> torch.Tensor:
    """Like :func:`run_step`, but each stage hands its output straight to the next one.

    Every stage gets its Forward at once: the first with ``x``, the others naming the
    volunteer their input comes from. A stage that has a direct link to the next hands
    its output over itself and still returns a copy here (the *tap*): it is recorded
    for recovery and checked by the ``auditor`` while the next stages already compute,
    so checks leave the token's critical path. A stage without a direct link returns
    its output only, and it is relayed from here (:meth:`VolunteerLink.feed`).

    When a check finds a stage wrong, its output was already used downstream: the rest
    of the step is run again by relay from the coordinator's own output (each stage's
    cache is cut back to ``start_pos`` first), so the answer equals what :func:`run_step`
    would give.
    """
    stages = pipeline.stages
    if len(stages) == 1:
        return await run_step(pipeline, session_id, start_pos, x, trace, auditor=auditor, logits_top=logits_top)
    last = len(stages) - 1
    tokens = int(x.shape[0])
    opened: list[int | None] = [None] * len(stages)
    checks: list[asyncio.Task[torch.Tensor]] = []
    k = 0
    try:
        for i, stage in enumerate(stages):
            opened[i] = stage.link.open_step(assignment_id=stage.assignment_id, tokens=tokens,
                                             logits_top=logits_top if i == last else 0)
        for i, stage in enumerate(stages):
            k = i
            await stage.link.send_step(
                opened[i], session_id=session_id, assignment_id=stage.assignment_id, start_pos=start_pos,  # type: ignore[arg-type]
                x=x if i == 0 else None, from_node=None if i == 0 else stages[i - 1].link.node_id,
                next_node=stages[i + 1].link.node_id if i + 1 < len(stages) else None,
                next_step=opened[i + 1] if i + 1 < len(stages) else 0,  # type: ignore[arg-type]
                logits_top=logits_top if i == last else 0,
            )
        if trace is not None:
            trace.record(stages[0].start, start_pos, x)
        inputs = [x]
        handed_off = False
        for i, stage in enumerate(stages):
            k = i
            step_id, opened[i] = opened[i], None
            result = await stage.link.wait_step(step_id, refeed=inputs[-1] if handed_off else None)  # type: ignore[arg-type]
            y, handed_off = result.y, result.handed_off
            if auditor is not None and auditor.active:
                layers = LayerRange(stage.start, stage.end, stages[-1].end)
                checks.append(asyncio.create_task(auditor.check(
                    stage.link, session_id=session_id, layers=layers, start_pos=start_pos, x=inputs[-1], y=y, trace=trace,
                )))
            if i + 1 < len(stages):
                if trace is not None:
                    trace.record(stages[i + 1].start, start_pos, y)
                if not handed_off:
                    k = i + 1
                    await stages[i + 1].link.feed(opened[i + 1], y)  # type: ignore[arg-type]
            inputs.append(y)
        for i, check in enumerate(checks):
            used = inputs[i + 1]
            verified = await check
            if verified is not used:  # stage i was wrong, and its output went on: redo the rest by relay
                rest = LivePipeline(stages=stages[i + 1:], bottleneck_s=pipeline.bottleneck_s) if i + 1 < len(stages) else None
                if trace is not None and rest is not None:
                    trace.record(stages[i + 1].start, start_pos, verified)
                for task in checks[i + 1:]:
                    task.cancel()
                if rest is None:
                    return verified
                return await run_step(rest, session_id, start_pos, verified, trace, auditor=auditor, logits_top=logits_top)
        return inputs[-1]
    except StageFailed as exc:
        exc.node_id = exc.node_id or stages[k].link.node_id
        if getattr(exc, "link", None) is None:
            exc.link = stages[k].link  # type: ignore[attr-defined]
        raise
    finally:
        for stage, step_id in zip(stages, opened, strict=True):
            if step_id is not None:
                stage.link.abandon(step_id)
        for task in checks:
            if not task.done():
                task.cancel()


async def rebuild(
    new: LivePipeline, holders: set[tuple[str, str]], session_id: str, trace: SessionTrace, pos: int
) -> int:
    """Give every stage of ``new`` the session's cache up to ``pos``; return the steps replayed.

    ``holders`` are the (node, assignment) pairs that already hold the cache. Every other
    stage is sent the recorded inputs of its first layer, step by step as they were first
    sent. Where those inputs were never recorded (a new boundary), they are the previous
    replayed stage's outputs, handed on as each step completes, so the stages replay as
    a pipeline rather than one after another.
    """
    stages = list(new.stages)
    changed = [i for i, st in enumerate(stages) if (st.link.node_id, st.assignment_id) not in holders]
    total = len(trace.steps(0, before=pos))
    if not changed or total == 0:
        trace.keep_only(new.boundaries)
        return 0
    feeds: dict[int, asyncio.Queue[tuple[int, torch.Tensor]]] = {}
    sources: dict[int, list[tuple[int, torch.Tensor]] | None] = {}
    for i in changed:
        recorded = trace.steps(stages[i].start, before=pos)
        if len(recorded) == total:
            sources[i] = recorded
        elif i - 1 in changed:
            sources[i] = None
            feeds[i] = asyncio.Queue()
        else:
            raise RequestFailed(f"no recorded inputs for layer {stages[i].start}; cannot rebuild the session")

    async def replay(i: int) -> None:
        stage = stages[i]
        last = i == len(stages) - 1
        record = not last and len(trace.steps(stage.end, before=pos)) != total
        for k in range(total):
            start_pos, x = sources[i][k] if sources[i] is not None else await feeds[i].get()  # type: ignore[index]
            try:
                (result,) = await stage.link.forward_many(
                    session_id=session_id, assignment_id=stage.assignment_id, steps=[(start_pos, x)], replay=True
                )
            except StageFailed as exc:
                exc.node_id = exc.node_id or stage.link.node_id
                exc.link = stage.link  # type: ignore[attr-defined]
                raise
            if record:
                trace.record(stage.end, start_pos, result.y)
            if i + 1 in feeds:
                feeds[i + 1].put_nowait((start_pos, result.y))

    tasks = [asyncio.create_task(replay(i)) for i in changed]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    trace.keep_only(new.boundaries)
    return total * len(changed)


def _holders(pipeline: LivePipeline | None) -> set[tuple[str, str]]:
    if pipeline is None:
        return set()
    return {(s.link.node_id, s.assignment_id) for s in pipeline.stages if not s.link.closed.is_set()}


async def generate(
    pool: Pool,
    tokenizer: TextTokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    direct: bool | None = None,
) -> AsyncIterator[TokenEvent]:
    """Stream the answer to ``prompt_ids``; the final event carries finish reason and usage.

    Stage failures are survived up to ``recovery_attempts`` times while a pipeline can be
    had within ``request_wait_s``; then the request fails with :class:`RequestFailed`.
    ``direct`` overrides the pool's ``direct_links`` setting for this request (benchmarks
    compare both ways on one pool).
    """
    if not prompt_ids:
        raise ConfigError("the prompt is empty", hint="send at least one token of text")
    limit = pool.config.context_tokens
    if len(prompt_ids) >= limit:
        raise ConfigError(
            f"the prompt has {len(prompt_ids)} tokens; this pool's context is {limit}",
            hint="shorten the prompt",
        )
    started = time.perf_counter()
    pipeline: LivePipeline | None = await pool.acquire_pipeline()
    session_id = uuid.uuid4().hex
    trace = SessionTrace()
    sampler = Sampler(params, seed=params.seed if params.seed is not None else secrets.randbits(63))
    logits_top = logits_needed(params)
    use_direct = pool.config.direct_links if direct is None else direct
    decoder = tokenizer.stream_decoder()
    matcher = StopStringMatcher(params.stop)
    eos = set() if params.ignore_eos else set(tokenizer.eos_token_ids)
    first_token_at: float | None = None
    produced = 0
    recoveries = 0
    replayed = 0
    finish = "length"
    used: list[LivePipeline] = [pipeline]
    try:
        x = torch.tensor(list(prompt_ids), dtype=torch.int64)
        pos = 0
        while produced < params.max_tokens and pos + x.numel() <= limit:
            if pool.closing:
                raise RequestFailed(
                    "the coordinator is shutting down; this answer was not finished",
                    hint="send the request again when the pool is back",
                )
            try:
                if pipeline is None or (pipeline.retired and pipeline.switch) or not pipeline.alive:
                    old, pipeline = pipeline, None
                    pipeline, moved = await _move(pool, old, session_id, trace, pos, used)
                    replayed += moved
                step = run_step_direct if use_direct else run_step
                logits = await step(pipeline, session_id, pos, x, trace, auditor=pool.auditor, logits_top=logits_top)
            except StageFailed as exc:
                recoveries += 1
                log.warning("session %s: %s; recovering (%d)", session_id[:8], exc, recoveries)
                pool.report_failure(getattr(exc, "link", None), str(exc))
                if recoveries > pool.config.recovery_attempts:
                    raise RequestFailed(
                        f"gave up after {recoveries - 1} recoveries: {exc}", hint="the pool is unstable; try again"
                    ) from exc
                if pipeline is not None:
                    pipeline.retired, pipeline.switch = True, True
                continue
            pos += x.numel()
            token = sampler.sample(logits)
            produced += 1
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if token in eos:
                finish = "stop"
                break
            match = matcher.push(decoder.push(token))
            if match.stopped:
                finish = "stop"
                if match.text:
                    yield TokenEvent(token, match.text)
                break
            yield TokenEvent(token, match.text)
            x = torch.tensor([token], dtype=torch.int64)
        tail = "" if matcher.stopped else matcher.push(decoder.flush()).text + matcher.flush()
        ended = time.perf_counter()
        first = first_token_at or ended
        decode_s = ended - first
        usage = Usage(
            prompt_tokens=len(prompt_ids),
            completion_tokens=produced,
            time_to_first_token_s=first - started,
            decode_tokens_per_s=(produced - 1) / decode_s if produced > 1 and decode_s > 0 else 0.0,
            total_s=ended - started,
            recoveries=recoveries,
            replayed_steps=replayed,
        )
        yield TokenEvent(-1, tail, finish_reason=finish, usage=usage)
    finally:
        if pipeline is not None:
            pool.release_pipeline(pipeline)
        ended_on: set[tuple[str, str]] = set()
        for p in used:
            for stage in p.stages:
                key = (stage.link.node_id, stage.assignment_id)
                if key not in ended_on:
                    ended_on.add(key)
                    await stage.link.end_session(session_id)
        pool.auditor.verifier.end_session(session_id)


async def _move(
    pool: Pool, old: LivePipeline | None, session_id: str, trace: SessionTrace, pos: int, used: list[LivePipeline]
) -> tuple[LivePipeline, int]:
    """Leave ``old`` for a pipeline in service, rebuilding what the session had; returns it and the steps replayed."""
    holders = _holders(old)
    if old is not None and old.tainted:  # a quarantined stage fed it: rebuild everything from the token ids
        holders = set()
        trace.keep_only([0])
        pool.auditor.verifier.end_session(session_id)
    if old is not None:
        pool.release_pipeline(old)
    deadline = time.monotonic() + pool.config.request_wait_s
    try:
        new = await pool.acquire_pipeline(deadline=deadline)
    except PoolUnavailable as exc:
        raise RequestFailed(f"the session could not continue: {exc.message}", hint=exc.hint) from exc
    used.append(new)
    try:
        replayed = await rebuild(new, holders, session_id, trace, pos)
    except BaseException:
        pool.release_pipeline(new)
        raise
    if replayed:
        pool.events.add("replay", f"session {session_id[:8]} moved at token {pos}: {replayed} steps replayed")
    return new, replayed


__all__ = ["TokenEvent", "Usage", "SessionTrace", "generate", "rebuild", "run_step", "run_step_direct"]
