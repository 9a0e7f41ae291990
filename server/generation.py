"""One generation request driven through a pipeline, token by token.

The coordinator tokenizes, sends the prompt through the stages (prefill), samples each
next token from the last stage's logits, and loops (decode). It records every stage's
inputs for the session (:class:`SessionTrace`) so a replacement stage can be rebuilt by
replaying them. Text is detokenized incrementally and held back where it could still
become a stop string.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import torch

from core.errors import ConfigError
from core.store.tokenizer import TextTokenizer
from server.pool import LivePipeline, Pool
from server.sampling import Sampler, SamplingParams, StopStringMatcher


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


@dataclass(frozen=True, slots=True)
class Usage:
    """Counts and timings of one finished request."""

    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float


@dataclass(slots=True)
class SessionTrace:
    """Each stage's inputs of one session, in order: ``(start_pos, tensor)`` per step."""

    inputs: list[list[tuple[int, torch.Tensor]]] = field(default_factory=list)

    def record(self, stage: int, start_pos: int, x: torch.Tensor) -> None:
        while len(self.inputs) <= stage:
            self.inputs.append([])
        self.inputs[stage].append((start_pos, x))


async def run_step(
    pipeline: LivePipeline, session_id: str, start_pos: int, x: torch.Tensor, trace: SessionTrace | None = None
) -> torch.Tensor:
    """Send ``x`` through every stage of ``pipeline``; return the last stage's logits."""
    for index, stage in enumerate(pipeline.stages):
        if trace is not None:
            trace.record(index, start_pos, x)
        result = await stage.link.forward(
            session_id=session_id, assignment_id=stage.assignment_id, start_pos=start_pos, x=x
        )
        x = result.y
    return x


async def generate(
    pool: Pool,
    tokenizer: TextTokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
) -> AsyncIterator[TokenEvent]:
    """Stream the answer to ``prompt_ids``; the final event carries finish reason and usage."""
    if not prompt_ids:
        raise ConfigError("the prompt is empty", hint="send at least one token of text")
    limit = pool.config.context_tokens
    if len(prompt_ids) >= limit:
        raise ConfigError(
            f"the prompt has {len(prompt_ids)} tokens; this pool's context is {limit}",
            hint="shorten the prompt",
        )
    started = time.perf_counter()
    pipeline = await pool.acquire_pipeline()
    session_id = uuid.uuid4().hex
    trace = SessionTrace()
    sampler = Sampler(params, seed=params.seed if params.seed is not None else secrets.randbits(63))
    decoder = tokenizer.stream_decoder()
    matcher = StopStringMatcher(params.stop)
    eos = set() if params.ignore_eos else set(tokenizer.eos_token_ids)
    first_token_at: float | None = None
    produced = 0
    finish = "length"
    try:
        x = torch.tensor(list(prompt_ids), dtype=torch.int64)
        pos = 0
        while produced < params.max_tokens and pos + x.numel() <= limit:
            logits = await run_step(pipeline, session_id, pos, x, trace)
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
        )
        yield TokenEvent(-1, tail, finish_reason=finish, usage=usage)
    finally:
        pool.release_pipeline(pipeline)
        for stage in pipeline.stages:
            await stage.link.end_session(session_id)
