"""OpenAI-style errors: the request errors the API raises and their JSON shape and status.

The API raises members of Butterfly's one exception tree (:mod:`core.errors`); this module
adds the few the HTTP surface needs (a bad parameter, an unknown model, a full queue, a
spent rate limit, a body too large) and maps every :class:`~core.errors.ButterflyError` to
the body OpenAI clients expect::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Routes outside ``/v1`` answer the plain shape ``{"error": message, "hint": hint}``
(:func:`plain_error`). Both carry ``Retry-After`` when the client should wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import (
    AuthFailed,
    ButterflyError,
    ConfigError,
    ModelFormatError,
    PoolUnavailable,
    StageFailed,
)


class InvalidRequest(ConfigError):
    """A request parameter is missing, malformed or unsupported (HTTP 400).

    ``param`` names the offending field (``"temperature"``, ``"messages"``); ``code`` is a
    machine-readable reason where OpenAI defines one (``"context_length_exceeded"``).
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.param = param
        self.code = code


class ModelNotFound(ConfigError):
    """The request names a model this pool does not serve (HTTP 404)."""

    http_status = 404


class QueueFull(PoolUnavailable):
    """Every slot is busy and the waiting queue is at its bound (HTTP 429)."""

    http_status = 429


class MissingApiKey(AuthFailed):
    """The API needs a Bearer key and the request has none or a wrong one (HTTP 401)."""


class RateLimited(PoolUnavailable):
    """The caller's key spent its requests or tokens per minute (HTTP 429); retry after ``retry_after_s``."""

    http_status = 429

    def __init__(self, message: str, *, retry_after_s: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class BodyTooLarge(ConfigError):
    """The request body is larger than the server accepts (HTTP 413)."""

    http_status = 413


def retry_after_header(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for waiting ``seconds`` (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


@dataclass(frozen=True, slots=True)
class ApiError:
    """One OpenAI-style error: the HTTP status and the four fields of its body."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients parse: ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Extra response headers: ``Retry-After`` when the client should wait."""
        return {} if self.retry_after_s is None else retry_after_header(self.retry_after_s)


def api_error(exc: BaseException) -> ApiError:
    """Map any exception to the OpenAI-style error a client should see.

    Butterfly errors keep their message and hint; anything else becomes a generic 500 so
    internals never leak to clients.
    """
    if not isinstance(exc, ButterflyError):
        return ApiError(500, "the coordinator failed unexpectedly; see its log", "server_error", code="internal_error")
    message = str(exc)
    if isinstance(exc, InvalidRequest):
        return ApiError(400, message, "invalid_request_error", exc.param, exc.code)
    if isinstance(exc, ModelNotFound):
        return ApiError(404, message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, AuthFailed):
        return ApiError(401, message, "authentication_error", None, "invalid_api_key")
    if isinstance(exc, RateLimited):
        return ApiError(429, message, "rate_limit_error", None, "rate_limit_exceeded", exc.retry_after_s)
    if isinstance(exc, BodyTooLarge):
        return ApiError(413, message, "invalid_request_error", None, "request_too_large")
    if isinstance(exc, QueueFull):
        return ApiError(429, message, "rate_limit_error", None, "queue_full")
    if isinstance(exc, PoolUnavailable):
        return ApiError(503, message, "server_error", None, "no_capacity")
    if isinstance(exc, StageFailed):
        return ApiError(502, message, "server_error", None, "stage_failed")
    if isinstance(exc, (ConfigError, ModelFormatError)):
        return ApiError(400, message, "invalid_request_error")
    return ApiError(exc.http_status if exc.http_status >= 400 else 500, message, "server_error")


def plain_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, plain JSON body ``{"error", "hint"}`` and headers for an error outside ``/v1``.

    Non-Butterfly exceptions become a generic 500, as in :func:`api_error`.
    """
    if not isinstance(exc, ButterflyError):
        return 500, {"error": "the coordinator failed unexpectedly; see its log", "hint": None}, {}
    status = exc.http_status if exc.http_status >= 400 else 500
    headers = retry_after_header(exc.retry_after_s) if isinstance(exc, RateLimited) else {}
    return status, {"error": exc.message, "hint": exc.hint}, headers
