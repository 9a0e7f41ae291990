"""The /v1 routes' edges on a real aiohttp server: keys, unknown paths, bad bodies (no pool needed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.api.access import ClientAccess
from server.api.body_limit import body_limit
from server.api.keys import KeyStore
from server.api.metrics import Metrics, Readings
from server.api.openai import OpenAIApi
from server.api.queue import RequestGate
from server.ratelimit import ClientRateLimiter

MODEL = "tiny"


class Tokenizer:
    vocab_size = 10

    def apply_chat_template(self, messages: Any, *, add_generation_prompt: bool) -> str:
        return "x" * 50

    def encode(self, text: str) -> list[int]:
        return [1] * len(text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for(
    tmp_path: Path,
    *,
    static_key: str | None = None,
    context_tokens: int = 16,
    requests_per_minute: int = 0,
    clock: Clock | None = None,
) -> tuple[TestClient, KeyStore]:
    keys = KeyStore(tmp_path / "keys.json")
    limiter = ClientRateLimiter(requests_per_minute=requests_per_minute, tokens_per_minute=0)
    access = ClientAccess(keys=keys, static_key=static_key, limiter=limiter, clock=clock or Clock())
    api = OpenAIApi(
        pool=None,  # type: ignore[arg-type] - these requests never reach generation
        tokenizer=Tokenizer(),  # type: ignore[arg-type]
        model_name=MODEL,
        fingerprint="fp",
        created=123,
        context_tokens=context_tokens,
        access=access,
        gate=RequestGate(lambda: 1, max_queue=0, wait_s=1.0),
        metrics=Metrics(lambda: Readings(0, 0, 0, 0, 0, 0)),
    )
    app = web.Application(client_max_size=2048, middlewares=[body_limit])
    api.install(app)
    return TestClient(TestServer(app, host="127.0.0.1")), keys


async def error_of(response) -> dict[str, Any]:  # noqa: ANN001
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_open_pool_needs_no_key(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path)
    async with client:
        response = await client.get("/v1/models")
        assert response.status == 200
        assert (await response.json())["data"][0] == {"id": MODEL, "object": "model", "created": 123, "owned_by": "butterfly"}


async def test_any_active_key_makes_keys_required(tmp_path: Path) -> None:
    client, keys = client_for(tmp_path)
    _, secret = keys.create("a", now=time.time())
    async with client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {secret}"}, {"Authorization": "Bearer "}):
            response = await client.get("/v1/models", headers=headers)
            assert response.status == 401, headers
            err = await error_of(response)
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
        ok = await client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert ok.status == 200
        chat = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert chat.status == 401  # the key check comes before the body's


async def test_the_coordinator_key_is_accepted_too(tmp_path: Path) -> None:
    client, keys = client_for(tmp_path, static_key="s3cret")
    _, secret = keys.create("a", now=time.time())
    async with client:
        assert (await client.get("/v1/models")).status == 401
        for key in ("s3cret", secret):
            assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param", "code"),
    [
        ("GET", "/v1/nothing", None, 404, None, "unknown_url"),
        ("GET", "/v1/chat/completions", None, 404, None, "unknown_url"),
        ("POST", "/v1/chat/completions", b"{oops", 400, None, None),
        ("POST", "/v1/chat/completions", b"x" * 4096, 413, None, "request_too_large"),
        ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}', 400, "messages", "context_length_exceeded"),
        ("POST", "/v1/completions", b'{"model": "tiny", "prompt": [11]}', 400, "prompt", None),
        ("POST", "/v1/completions", b'{"model": "other", "prompt": "a"}', 404, "model", "model_not_found"),
    ],
)
async def test_bad_requests(tmp_path: Path, method: str, path: str, body: bytes | None, status: int, param: str | None, code: str | None) -> None:
    client, _ = client_for(tmp_path)
    async with client:
        response = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
        assert response.status == status
        err = await error_of(response)
        assert (err["param"], err["code"]) == (param, code)


async def test_a_key_over_its_requests_per_minute_gets_429_with_retry_after(tmp_path: Path) -> None:
    clock = Clock()
    client, keys = client_for(tmp_path, requests_per_minute=2, clock=clock)
    _, alice = keys.create("alice", now=time.time())
    _, bob = keys.create("bob", now=time.time())
    async with client:
        for _ in range(2):
            assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {alice}"})).status == 200
        refused = await client.get("/v1/models", headers={"Authorization": f"Bearer {alice}"})
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "30"  # one request back every 30 s at 2 a minute
        err = await error_of(refused)
        assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
        assert "requests a minute" in err["message"]
        # Limits count per key: another key is unaffected; time refills the first.
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {bob}"})).status == 200
        clock.now += 30
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {alice}"})).status == 200


async def test_a_declared_oversized_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path)
    async with client:
        response = await client.post("/v1/completions", data=b"{" + b" " * 10_000 + b"}", headers={"Content-Type": "application/json"})
        assert response.status == 413
        err = await error_of(response)
        assert err["code"] == "request_too_large" and "2048 bytes" in err["message"]
