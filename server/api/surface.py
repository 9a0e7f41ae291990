"""Everything a coordinator shows to people and programs besides ``/ws`` and ``/api/generate``.

:class:`ClientSurface` builds, for one coordinator, the OpenAI-compatible API, the API key
store with the per-key rate limits, the bounded request queue, the admin API, the
Prometheus metrics, the pool telemetry and the cluster map, and installs their routes and
middlewares (admin key, body size) on the coordinator's aiohttp application::

    surface = ClientSurface(coordinator)
    surface.install(app)          # /v1/*, /api/admin/*, /, /static/*, /api/cluster, /api/events, /metrics
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from core.errors import ButterflyError
from server.api.access import ClientAccess
from server.api.admin import AdminApi
from server.api.body_limit import body_limit
from server.api.keys import KEYS_FILE, KeyStore
from server.api.metrics import Metrics, Readings
from server.api.openai import OpenAIApi
from server.api.queue import RequestGate
from server.ratelimit import ClientRateLimiter
from server.web.map import ClusterMap
from server.web.telemetry import TelemetrySampler
from server.web.view import PoolInfo, cluster_view

if TYPE_CHECKING:
    from core.identity import Identity
    from core.store.store import StoredModel
    from core.store.tokenizer import TextTokenizer
    from server.config import CoordinatorConfig
    from server.db import SqlitePoolRegistry
    from server.pool import Pool

log = logging.getLogger(__name__)


class CoordinatorParts(Protocol):
    """What the surface reads from its coordinator (``url`` is read live: it is known only once bound)."""

    config: CoordinatorConfig
    model: StoredModel
    pool: Pool
    tokenizer: TextTokenizer
    identity: Identity
    registry: SqlitePoolRegistry
    url: str

    @property
    def pool_id(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """Bounds of the client API.

    - ``max_queue``: requests that may wait for a slot; more get HTTP 429.
    - ``max_running``: requests generating at once; ``None`` means the pool's session
      budget (``max_sessions``) per ready pipeline.
    """

    max_queue: int = 32
    max_running: int | None = None


class ClientSurface:
    """The OpenAI API, cluster map and metrics of one coordinator."""

    def __init__(self, coordinator: CoordinatorParts, *, settings: ApiSettings | None = None) -> None:
        self.coordinator = coordinator
        self.settings = settings or ApiSettings()
        config = coordinator.config
        self.keys = KeyStore(config.data_dir / KEYS_FILE)
        self.access = ClientAccess(
            keys=self.keys,
            static_key=config.api_key,
            limiter=ClientRateLimiter(
                requests_per_minute=config.api_requests_per_minute, tokens_per_minute=config.api_tokens_per_minute
            ),
        )
        self.admin = AdminApi.for_coordinator(coordinator)
        self.gate = RequestGate(self._capacity, max_queue=self.settings.max_queue, wait_s=config.request_wait_s)
        self.telemetry = TelemetrySampler(coordinator.pool)
        self.metrics = Metrics(self._readings)
        self.openai = OpenAIApi(
            pool=coordinator.pool,
            tokenizer=coordinator.tokenizer,
            model_name=coordinator.model.manifest.name,
            fingerprint=coordinator.model.manifest.model_id,
            created=int(time.time()),
            context_tokens=config.context_tokens,
            access=self.access,
            gate=self.gate,
            metrics=self.metrics,
        )
        self.map = ClusterMap(self.view)

    def configure(self, settings: ApiSettings) -> None:
        """Apply new API bounds now; requests already waiting or running keep their places."""
        self.settings = settings
        self.gate.max_queue = settings.max_queue

    def install(self, app: web.Application) -> None:
        """Add every route and middleware (metrics, body size, admin key) to ``app``; telemetry runs while ``app`` does."""
        app.middlewares.append(self.metrics.middleware)
        app.middlewares.append(body_limit)
        self.admin.install(app)
        self.openai.install(app)
        self.map.install(app)
        app.router.add_get("/metrics", self.metrics.handler)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    async def _start(self, app: web.Application) -> None:
        self.telemetry.start()

    async def _stop(self, app: web.Application) -> None:
        await self.telemetry.stop()

    def view(self) -> dict[str, Any]:
        """The cluster view (see :func:`server.web.view.cluster_view`) as of now."""
        c = self.coordinator
        snapshot = c.pool.snapshot()
        info = PoolInfo(
            pool_id=c.pool_id,
            name=c.config.pool_name,
            url=c.url,
            model=c.model.manifest.name,
            key_required=self._key_required(),
        )
        return cluster_view(snapshot, info=info, telemetry=self.telemetry.state, queue=self.gate.stats(), now=time.time())

    def _key_required(self) -> bool:
        try:
            return self.openai.key_required
        except ButterflyError as exc:  # an unreadable key file: the API refuses requests, so say a key is needed
            log.warning("%s", exc)
            return True

    def _capacity(self) -> int:
        if self.settings.max_running is not None:
            return self.settings.max_running
        return self.coordinator.config.max_sessions * len(self.coordinator.pool.pipelines)

    def _readings(self) -> Readings:
        pool = self.coordinator.pool
        state = self.telemetry.state
        return Readings(
            volunteers=len(pool.links),
            pipelines=len(pool.pipelines),
            queue_waiting=self.gate.waiting,
            requests_running=self.gate.running,
            tokens_generated=state.tokens_total,
            stage_failures=state.stage_failures,
        )
