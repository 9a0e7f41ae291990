"""Every Butterfly error maps to the OpenAI error shape with the right status."""

from __future__ import annotations

import pytest

from core.errors import AuthFailed, ConfigError, InsufficientCapacity, ModelFormatError, PoolUnavailable, RequestFailed, StageFailed, StoreError
from server.api.errors import InvalidRequest, MissingApiKey, ModelNotFound, QueueFull, api_error


@pytest.mark.parametrize(
    ("exc", "status", "kind", "code"),
    [
        (InvalidRequest("bad", param="x", code="c"), 400, "invalid_request_error", "c"),
        (ConfigError("bad"), 400, "invalid_request_error", None),
        (ModelFormatError("no template"), 400, "invalid_request_error", None),
        (ModelNotFound("nope"), 404, "invalid_request_error", "model_not_found"),
        (MissingApiKey("key"), 401, "authentication_error", "invalid_api_key"),
        (AuthFailed("key"), 401, "authentication_error", "invalid_api_key"),
        (QueueFull("busy"), 429, "rate_limit_error", "queue_full"),
        (PoolUnavailable("none"), 503, "server_error", "no_capacity"),
        (InsufficientCapacity("small", missing_bytes=1), 503, "server_error", "no_capacity"),
        (StageFailed("gone"), 502, "server_error", "stage_failed"),
        (RequestFailed("failed"), 500, "server_error", None),
        (StoreError("disk"), 500, "server_error", None),
        (RuntimeError("secret internals"), 500, "server_error", "internal_error"),
    ],
)
def test_mapping(exc: Exception, status: int, kind: str, code: str | None) -> None:
    err = api_error(exc)
    assert (err.status, err.type, err.code) == (status, kind, code)
    body = err.body()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "secret internals" not in err.message


def test_message_carries_the_hint() -> None:
    err = api_error(PoolUnavailable("no pipeline", hint="add volunteers"))
    assert err.message == "no pipeline (add volunteers)"
