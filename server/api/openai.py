"""The OpenAI-compatible API: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

Any OpenAI SDK works against a pool: point its base URL at ``http://<coordinator>/v1``. The
model id is the pool's model name. Requests pass, in order: the API key check and the
key's rate limits (:mod:`server.api.access`), body checks (:mod:`server.api.openai_schema`), the bounded queue (:mod:`server.api.queue`), then
:func:`server.generation.generate`. Status codes are decided before the first byte: a
stream's headers go out only once its first token exists, so a pool with no capacity
answers 503 (or 429 when the queue is full), never a 200 that then breaks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import ButterflyError
from server.api.access import ClientAccess
from server.api.errors import ApiError, BodyTooLarge, InvalidRequest, api_error
from server.api.metrics import Metrics
from server.api.openai_schema import (
    SSE_DONE,
    Envelope,
    chat_chunk,
    chat_completion,
    model_list,
    parse_chat_request,
    parse_text_request,
    sse_event,
    text_completion,
    usage_body,
    usage_chunk,
)
from server.api.queue import RequestGate
from server.generation import TokenEvent, generate
from server.sampling import SamplingParams

if TYPE_CHECKING:
    from core.store.tokenizer import TextTokenizer
    from server.pool import Pool

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OpenAIApi:
    """The ``/v1`` routes of one coordinator.

    ``access`` decides which keys are accepted (the coordinator's ``--api-key`` and every
    active stored key; none: the API is open) and how much each may use; generated
    tokens are charged to the request's key as they are produced.
    """

    def __init__(
        self,
        *,
        pool: Pool,
        tokenizer: TextTokenizer,
        model_name: str,
        fingerprint: str,
        created: int,
        context_tokens: int,
        access: ClientAccess,
        gate: RequestGate,
        metrics: Metrics,
    ) -> None:
        self.pool = pool
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.fingerprint = fingerprint
        self.created = created
        self.context_tokens = context_tokens
        self.access = access
        self.gate = gate
        self.metrics = metrics

    def install(self, app: web.Application) -> None:
        """Add the ``/v1`` routes to ``app``; unknown ``/v1`` paths get an OpenAI-style 404."""
        app.router.add_get("/v1/models", _openai_errors(self.models))
        app.router.add_post(CHAT, _openai_errors(self.chat_completions))
        app.router.add_post(TEXT, _openai_errors(self.completions))
        app.router.add_route("*", "/v1/{tail:.*}", _openai_errors(self.unknown))

    @property
    def key_required(self) -> bool:
        """Whether requests must carry a Bearer key."""
        return self.access.key_required

    # --- handlers ------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        self.access.admit(request)
        return web.json_response(model_list(self.model_name, created=self.created, owner="butterfly"))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        who = self.access.admit(request)
        req = parse_chat_request(await _json_body(request), model_name=self.model_name, default_max_tokens=self.context_tokens)
        text = self.tokenizer.apply_chat_template(list(req.messages), add_generation_prompt=True)
        prompt_ids = self.tokenizer.encode(text)
        return await self._serve(
            request, CHAT, prompt_ids, req.params, who=who, stream=req.stream, include_usage=req.include_usage, param="messages"
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        who = self.access.admit(request)
        req = parse_text_request(
            await _json_body(request),
            model_name=self.model_name,
            vocab_size=self.tokenizer.vocab_size,
            default_max_tokens=self.context_tokens,
        )
        prompt_ids = list(req.prompt) if isinstance(req.prompt, tuple) else self.tokenizer.encode(req.prompt)
        return await self._serve(
            request, TEXT, prompt_ids, req.params, who=who, stream=req.stream, include_usage=req.include_usage, param="prompt"
        )

    async def unknown(self, request: web.Request) -> web.Response:
        err = ApiError(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error", code="unknown_url")
        return web.json_response(err.body(), status=err.status)

    # --- serving -------------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        endpoint: str,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        who: str,
        stream: bool,
        include_usage: bool,
        param: str,
    ) -> web.StreamResponse:
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", param=param)
        if len(prompt_ids) >= self.context_tokens:
            raise InvalidRequest(
                f"the prompt has {len(prompt_ids)} tokens; this pool's context is {self.context_tokens}",
                param=param,
                code="context_length_exceeded",
            )
        chat = endpoint == CHAT
        env = Envelope.new("chat" if chat else "text", model=self.model_name, fingerprint=self.fingerprint)
        async with self.gate.slot():
            counted = _charged(generate(self.pool, self.tokenizer, prompt_ids, params), lambda n: self.access.charge(who, n))
            async with aclosing(counted) as events:
                first = await anext(events)
                answer = _chain(first, events)
                if stream:
                    return await self._stream(request, endpoint, env, answer, chat=chat, include_usage=include_usage)
                pieces: list[str] = []
                final: TokenEvent | None = None
                async for event in answer:
                    pieces.append(event.text)
                    final = event if event.finish_reason else final
        assert final is not None and final.usage is not None  # generate always ends with usage
        usage = usage_body(final.usage.prompt_tokens, final.usage.completion_tokens)
        self._observe(endpoint, final)
        text = "".join(pieces)
        finish = final.finish_reason or "stop"
        if chat:
            return web.json_response(chat_completion(env, text=text, finish_reason=finish, usage=usage))
        return web.json_response(text_completion(env, text=text, finish_reason=finish, usage=usage))

    async def _stream(
        self,
        request: web.Request,
        endpoint: str,
        env: Envelope,
        answer: AsyncIterator[TokenEvent],
        *,
        chat: bool,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                delta = {} if text is None else {"content": text}
                return chat_chunk(env, delta=delta, finish_reason=finish, include_usage=include_usage)
            body = text_completion(env, text=text or "", finish_reason=finish, usage=None)
            if include_usage:
                body["usage"] = None
            return body

        try:
            if chat:
                first = chat_chunk(env, delta={"role": "assistant", "content": ""}, include_usage=include_usage)
                await response.write(sse_event(first))
            async for event in answer:
                if event.text:
                    await response.write(sse_event(chunk(event.text, None)))
                if event.finish_reason and event.usage is not None:
                    await response.write(sse_event(chunk(None, event.finish_reason)))
                    if include_usage:
                        usage = usage_body(event.usage.prompt_tokens, event.usage.completion_tokens)
                        await response.write(sse_event(usage_chunk(env, chat=chat, usage=usage)))
                    self._observe(endpoint, event)
        except (ConnectionError, RuntimeError) as exc:
            log.info("a client left during a stream: %s", exc)
            return response
        except ButterflyError as exc:
            await response.write(sse_event(api_error(exc).body()))
        await response.write(SSE_DONE)
        await response.write_eof()
        return response

    def _observe(self, endpoint: str, final: TokenEvent) -> None:
        if final.usage is not None:
            self.metrics.observe_generation(
                endpoint,
                prompt_tokens=final.usage.prompt_tokens,
                completion_tokens=final.usage.completion_tokens,
                ttft_s=final.usage.time_to_first_token_s,
            )


async def _charged(events: AsyncIterator[TokenEvent], charge: Callable[[int], None]) -> AsyncIterator[TokenEvent]:
    """``events`` unchanged; the tokens they carried are charged when the stream ends, however it ends."""
    tokens = 0
    try:
        async with aclosing(events) as inner:  # type: ignore[type-var]
            async for event in inner:
                if event.token_id >= 0:  # the final event may carry no new token (-1)
                    tokens += 1
                yield event
    finally:
        charge(tokens)


async def _chain(first: TokenEvent, rest: AsyncIterator[TokenEvent]) -> AsyncIterator[TokenEvent]:
    yield first
    if first.finish_reason is None:
        async for event in rest:
            yield event


async def _json_body(request: web.Request) -> object:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(
            f"the request body is larger than {request.client_max_size} bytes", hint="send a shorter prompt"
        ) from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def _openai_errors(handler: Handler) -> Handler:
    """Answer every failure of ``handler`` with an OpenAI-style error body and status."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - the edge: everything becomes an OpenAI error
            err = api_error(exc)
            if err.status >= 500:
                log.warning("%s %s failed: %s", request.method, request.path, exc, exc_info=not isinstance(exc, ButterflyError))
            return web.json_response(err.body(), status=err.status, headers=err.headers())

    return wrapped
