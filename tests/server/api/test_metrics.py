"""Metrics in a per-coordinator registry: the middleware's counts, histograms and live readings."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from server.api.metrics import Metrics, Readings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_requests_are_counted_by_route_and_status_and_live_readings_exposed() -> None:
    readings = Readings(volunteers=3, pipelines=1, queue_waiting=2, requests_running=4, tokens_generated=77, stage_failures=1)
    metrics = Metrics(lambda: readings)
    app = web.Application(middlewares=[metrics.middleware])

    async def item(request: web.Request) -> web.Response:
        if request.match_info["name"] == "bad":
            raise web.HTTPBadRequest()
        return web.Response(text="ok")

    app.router.add_get("/items/{name}", item)
    app.router.add_get("/metrics", metrics.handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path in ("/items/a", "/items/b", "/items/bad", "/nowhere"):
            await (await client.get(path)).read()
        metrics.observe_generation("/v1/chat/completions", prompt_tokens=10, completion_tokens=5, ttft_s=0.3)
        response = await client.get("/metrics")
        assert response.headers["Content-Type"].startswith("text/plain")
        got = samples(await response.text())

    assert got[("butterfly_http_requests_total", (("endpoint", "/items/{name}"), ("status", "200")))] == 2
    assert got[("butterfly_http_requests_total", (("endpoint", "/items/{name}"), ("status", "400")))] == 1
    assert got[("butterfly_http_requests_total", (("endpoint", "other"), ("status", "404")))] == 1
    assert got[("butterfly_http_request_duration_seconds_count", (("endpoint", "/items/{name}"),))] == 3
    chat = (("endpoint", "/v1/chat/completions"),)
    assert got[("butterfly_time_to_first_token_seconds_count", chat)] == 1
    assert got[("butterfly_time_to_first_token_seconds_bucket", (*chat, ("le", "0.5")))] == 1
    assert got[("butterfly_time_to_first_token_seconds_bucket", (*chat, ("le", "0.25")))] == 0
    assert got[("butterfly_api_prompt_tokens_total", chat)] == 10
    assert got[("butterfly_api_completion_tokens_total", chat)] == 5
    assert got[("butterfly_tokens_generated_total", ())] == 77
    assert got[("butterfly_stage_failures_total", ())] == 1
    assert got[("butterfly_volunteers_connected", ())] == 3
    assert got[("butterfly_pipelines_ready", ())] == 1
    assert got[("butterfly_queue_waiting", ())] == 2
    assert got[("butterfly_requests_running", ())] == 4


def test_two_coordinators_have_separate_registries() -> None:
    zero = Readings(0, 0, 0, 0, 0, 0)
    a, b = Metrics(lambda: zero), Metrics(lambda: zero)
    a.observe_request("/x", 200, 0.1)
    assert b"butterfly_http_requests_total" in a.render()
    assert b'endpoint="/x"' not in b.render()
