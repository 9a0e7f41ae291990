"""Who may use the client API (``/v1/*``, ``/api/generate``) and how much.

A request passes :meth:`ClientAccess.admit` when it carries a valid key (any active key
in the key store, or the coordinator's ``--api-key``) or the pool has no keys at all, and
when that key still has requests and generated tokens left this minute
(:class:`server.ratelimit.ClientRateLimiter`). Limits count per key; in a pool without keys
they count per client address. The admin key is not a client key: it opens only the
admin endpoints (:mod:`server.api.admin`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from aiohttp import web

from server.api.errors import MissingApiKey, RateLimited, plain_error
from server.api.keys import KeyStore
from server.ratelimit import ClientRateLimiter


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def plain_error_response(exc: BaseException) -> web.Response:
    """The plain JSON error (``{"error", "hint"}``, its status, ``Retry-After`` if any) for routes outside ``/v1``."""
    status, body, headers = plain_error(exc)
    return web.json_response(body, status=status, headers=headers)


class ClientAccess:
    """Authenticates client requests and applies the per-key rate limits.

    ``clock`` (default :func:`time.monotonic`) is the limiter's time source.
    """

    def __init__(
        self,
        *,
        keys: KeyStore,
        static_key: str | None,
        limiter: ClientRateLimiter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.static_key = static_key
        self.limiter = limiter
        self._clock = clock

    @property
    def key_required(self) -> bool:
        """Whether requests must carry a Bearer key."""
        return self.static_key is not None or self.keys.required

    def authenticate(self, request: web.Request) -> str:
        """Who the request counts against: ``key:<id>``, ``static``, or ``addr:<ip>`` in a pool without keys.

        Raises :class:`MissingApiKey` when a key is required and missing, unknown or revoked.
        """
        if not self.key_required:
            return f"addr:{request.remote or '?'}"
        token = bearer_token(request)
        if token is None:
            raise MissingApiKey(
                "this pool requires an API key",
                hint="send 'Authorization: Bearer <key>'; the host creates keys with `butterfly apikey create`",
            )
        if self.static_key is not None and hmac.compare_digest(token.encode(), self.static_key.encode()):
            return "static"
        key = self.keys.verify(token)
        if key is None:
            raise MissingApiKey("the API key is not valid or was revoked", hint="ask the pool's host for a key")
        return f"key:{key.key_id}"

    def admit(self, request: web.Request) -> str:
        """Authenticate the request and take one request from its key's budget; returns the key (see above).

        Raises :class:`MissingApiKey` or :class:`RateLimited` (with the seconds to wait).
        """
        who = self.authenticate(request)
        verdict = self.limiter.admit(who, self._clock())
        if not verdict.allowed:
            raise RateLimited(
                f"rate limit reached: {verdict.reason}",
                retry_after_s=verdict.retry_after_s,
                hint=f"retry in {max(1, round(verdict.retry_after_s))} s, or ask the host for a higher limit",
            )
        return who

    def charge(self, who: str, tokens: int) -> None:
        """Count ``tokens`` generated for ``who`` against its tokens per minute."""
        self.limiter.charge_tokens(who, tokens, self._clock())
