"""Prometheus metrics of one coordinator, in its own registry (never the process-global one).

Counters and histograms are fed by the HTTP layer (every request through
:meth:`Metrics.middleware`, generation results through :meth:`Metrics.observe_generation`);
gauges and pool-wide totals are read live from :class:`Readings` at scrape time.

Exposed (``GET /metrics``, Prometheus text format):

- ``butterfly_http_requests_total{endpoint,status}`` and
  ``butterfly_http_request_duration_seconds{endpoint}`` (streams: until the last byte)
- ``butterfly_time_to_first_token_seconds{endpoint}``
- ``butterfly_api_prompt_tokens_total{endpoint}``, ``butterfly_api_completion_tokens_total{endpoint}``
- ``butterfly_tokens_generated_total``: every token the coordinator sampled, whichever client asked
- ``butterfly_volunteers_connected``, ``butterfly_pipelines_ready``
- ``butterfly_stage_failures_total``: volunteers lost while serving in a pipeline
- ``butterfly_queue_waiting``, ``butterfly_requests_running``
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0)
UNTIMED_PATHS = frozenset({"/ws", "/api/events"})
"""Long-lived connections: counted, but kept out of the latency histogram."""


@dataclass(frozen=True, slots=True)
class Readings:
    """Pool-wide numbers read at scrape time."""

    volunteers: int
    pipelines: int
    queue_waiting: int
    requests_running: int
    tokens_generated: int
    stage_failures: int


class _LiveCollector:
    """Turns a fresh :class:`Readings` into metric families at every scrape."""

    def __init__(self, read: Callable[[], Readings]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        r = self._read()
        yield CounterMetricFamily(
            "butterfly_tokens_generated", "Tokens sampled by the coordinator, for every client.", value=r.tokens_generated
        )
        yield CounterMetricFamily(
            "butterfly_stage_failures", "Volunteers lost while serving in a pipeline.", value=r.stage_failures
        )
        yield GaugeMetricFamily("butterfly_volunteers_connected", "Volunteers connected now.", value=r.volunteers)
        yield GaugeMetricFamily("butterfly_pipelines_ready", "Pipelines ready to serve.", value=r.pipelines)
        yield GaugeMetricFamily("butterfly_queue_waiting", "Requests waiting for a slot.", value=r.queue_waiting)
        yield GaugeMetricFamily("butterfly_requests_running", "Requests holding a slot.", value=r.requests_running)


class Metrics:
    """The metrics of one coordinator; ``read`` supplies the live pool numbers."""

    def __init__(self, read: Callable[[], Readings]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "butterfly_http_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "butterfly_http_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft_seconds = Histogram(
            "butterfly_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["endpoint"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "butterfly_api_prompt_tokens", "Prompt tokens of API requests.", ["endpoint"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "butterfly_api_completion_tokens", "Tokens returned by API requests.", ["endpoint"], registry=self.registry
        )
        self.registry.register(_LiveCollector(read))

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    def observe_generation(self, endpoint: str, *, prompt_tokens: int, completion_tokens: int, ttft_s: float) -> None:
        """Record one finished generation of ``endpoint``."""
        self.prompt_tokens.labels(endpoint).inc(prompt_tokens)
        self.completion_tokens.labels(endpoint).inc(completion_tokens)
        self.ttft_seconds.labels(endpoint).observe(ttft_s)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Record one answered HTTP request."""
        self.requests.labels(endpoint, str(status)).inc()
        if endpoint not in UNTIMED_PATHS:
            self.request_seconds.labels(endpoint).observe(seconds)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """aiohttp middleware counting and timing every request by its route (not its raw path)."""
        started = time.perf_counter()
        endpoint = _endpoint(request)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.observe_request(endpoint, status, time.perf_counter() - started)

    async def handler(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _endpoint(request: web.Request) -> str:
    """The route template a request matched, so labels stay few; ``other`` for unmatched paths."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "other"
