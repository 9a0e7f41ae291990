"""The official ``openai`` client against a live pool of the default model (two volunteer processes).

The oracle for the API's text is :func:`server.generation.generate` on the same pool: the
API must return exactly what the pool generates, streamed or not. One pool serves the
whole module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from server.api.surface import ApiSettings
from server.generation import generate
from server.sampling import SamplingParams
from tests.conftest import LivePool, live_pool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

QUESTION = "Name three colours of the rainbow."
NEW_TOKENS = 16


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(default_model, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LivePool]:  # noqa: ANN001
    async with live_pool(default_model, tmp_path_factory.mktemp("openai-pool"), volunteers=2) as live:
        await live.wait_ready()
        yield live


@pytest.fixture
def model_name(pool: LivePool) -> str:
    return pool.coordinator.model.manifest.name  # type: ignore[attr-defined]


def client(pool: LivePool, key: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=pool.coordinator.url + "/v1", api_key=key, max_retries=0, timeout=120)  # type: ignore[attr-defined]


async def reference(pool: LivePool, messages: list[dict[str, str]] | None = None, prompt: str | None = None, **params) -> tuple[str, int, str]:  # noqa: ANN003
    """Text, prompt token count and finish reason from ``generate`` itself."""
    c = pool.coordinator
    text = prompt if prompt is not None else c.tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # type: ignore[attr-defined]
    ids = c.tokenizer.encode(text)  # type: ignore[attr-defined]
    pieces, finish = [], ""
    async for event in generate(c.pool, c.tokenizer, ids, SamplingParams(**params)):  # type: ignore[attr-defined]
        pieces.append(event.text)
        finish = event.finish_reason or finish
    return "".join(pieces), len(ids), finish


async def test_models_lists_the_pool_model(pool: LivePool, model_name: str) -> None:
    models = await client(pool).models.list()
    assert [m.id for m in models.data] == [model_name]


async def test_greedy_chat_equals_generate_streamed_or_not(pool: LivePool, model_name: str) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    expected, prompt_tokens, finish = await reference(pool, messages, max_tokens=NEW_TOKENS, temperature=0.0)
    assert expected.strip()

    api = client(pool)
    whole = await api.chat.completions.create(model=model_name, messages=messages, temperature=0, max_tokens=NEW_TOKENS)
    assert whole.object == "chat.completion" and whole.model == model_name and whole.id.startswith("chatcmpl-")
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == finish
    assert whole.usage is not None and whole.usage.prompt_tokens == prompt_tokens
    assert whole.usage.total_tokens == prompt_tokens + whole.usage.completion_tokens

    stream = await api.chat.completions.create(
        model=model_name, messages=messages, temperature=0, max_completion_tokens=NEW_TOKENS, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # it really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


async def test_completions_with_stop_strings(pool: LivePool, model_name: str) -> None:
    prompt = "The three primary colours are"
    full, _, _ = await reference(pool, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0.0)
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    cut = full[: full.index(stop)]

    api = client(pool)
    plain = await api.completions.create(model=model_name, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0)
    assert plain.object == "text_completion" and plain.choices[0].text == full
    stopped = await api.completions.create(model=model_name, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, stop=[stop, "\u2603"])
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    stream = await api.completions.create(model=model_name, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, stop=stop, stream=True)
    pieces = [c async for c in stream]
    assert "".join(c.choices[0].text for c in pieces) == cut
    assert pieces[-1].choices[0].finish_reason == "stop"


async def test_seeded_sampling_repeats(pool: LivePool, model_name: str) -> None:
    api = client(pool)
    answers = [
        (await api.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Tell me a word."}], temperature=1.0, top_p=0.95,
            seed=1234, max_tokens=10,
        )).choices[0].message.content
        for _ in range(2)
    ]
    assert answers[0] == answers[1] and answers[0]


async def test_sse_wire_format_ends_with_done(pool: LivePool, model_name: str) -> None:
    body = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(pool.coordinator.url + "/v1/chat/completions", json=body) as response:  # type: ignore[attr-defined]
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            raw = (await response.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


async def test_bad_requests_raise_the_matching_openai_errors(pool: LivePool, model_name: str) -> None:
    api = client(pool)
    with pytest.raises(openai.BadRequestError) as info:
        await api.post("/chat/completions", cast_to=object, body={"model": model_name})
    assert info.value.status_code == 400 and info.value.param == "messages"
    assert info.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="non-empty"):
        await api.chat.completions.create(model=model_name, messages=[])
    with pytest.raises(openai.BadRequestError) as info:
        await api.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], temperature=3.5)
    assert info.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as info:
        await api.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        await api.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.param == "n"


async def test_keys_once_created_are_required(pool: LivePool, model_name: str) -> None:
    keys = pool.coordinator.surface.keys  # type: ignore[attr-defined]
    key, secret = keys.create("e2e", now=time.time())
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            await client(pool).models.list()
        assert info.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            await client(pool, "bfk_wrong").chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}])
        answer = await client(pool, secret).chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
        )
        assert answer.choices[0].message.content
    finally:
        keys.revoke(key.key_id, now=time.time())
    assert (await client(pool).models.list()).data


async def test_a_full_queue_answers_429(pool: LivePool, model_name: str) -> None:
    surface = pool.coordinator.surface  # type: ignore[attr-defined]
    surface.configure(ApiSettings(max_queue=0, max_running=1))
    api = client(pool)
    try:
        stream = await api.completions.create(
            model=model_name, prompt="Count: 1, 2, 3,", max_tokens=400, temperature=0, stream=True
        )
        first = await anext(aiter(stream))
        assert first.choices[0].text is not None
        assert surface.gate.running == 1
        with pytest.raises(openai.RateLimitError) as info:
            await api.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert info.value.status_code == 429 and info.value.code == "queue_full"
        await stream.close()
    finally:
        surface.configure(ApiSettings())
    deadline = time.monotonic() + 30
    while surface.gate.running and time.monotonic() < deadline:  # the abandoned stream ends server-side
        await asyncio.sleep(0.05)
    assert surface.gate.running == 0


async def test_metrics_expose_tokens_requests_latency_and_volunteers(pool: LivePool, model_name: str) -> None:
    api = client(pool)
    for _ in range(2):
        await api.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model=model_name, messages=[])
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    url = pool.coordinator.url + "/metrics"  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 5
        while True:  # tokens are folded in by the telemetry sampler every half second
            async with http.get(url) as response:
                text = await response.text()
            got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
            if got.get(("butterfly_tokens_generated_total", ()), 0) > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    chat = (("endpoint", "/v1/chat/completions"),)
    assert got[("butterfly_tokens_generated_total", ())] >= got[("butterfly_api_completion_tokens_total", chat)] > 0
    assert got[("butterfly_http_requests_total", (*chat, ("status", "200")))] >= 2
    assert got[("butterfly_http_requests_total", (*chat, ("status", "400")))] >= 1
    assert got[("butterfly_http_requests_total", (*chat, ("status", "404")))] >= 1
    assert got[("butterfly_http_request_duration_seconds_count", chat)] >= 4
    assert got[("butterfly_time_to_first_token_seconds_count", chat)] >= 2
    assert got[("butterfly_volunteers_connected", ())] == 2
    assert got[("butterfly_pipelines_ready", ())] >= 1
    assert got[("butterfly_stage_failures_total", ())] == 0
    assert got[("butterfly_queue_waiting", ())] == 0
