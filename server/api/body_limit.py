"""HTTP request bodies larger than the application's ``client_max_size`` get a clear 413.

aiohttp enforces the limit only when a handler reads the body, and then answers in plain
text. This middleware refuses a declared ``Content-Length`` over the limit before any
handler runs, and turns aiohttp's own refusal (a chunked body that grows too large) into
JSON: OpenAI-shaped under ``/v1/``, ``{"error", "hint"}`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from server.api.errors import BodyTooLarge, api_error, plain_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def too_large(request: web.Request) -> web.Response:
    """The 413 answer for ``request``, in the error shape of its path."""
    exc = BodyTooLarge(
        f"the request body is larger than this pool accepts ({request.client_max_size} bytes)",
        hint="send a smaller request",
    )
    if request.path.startswith("/v1/"):
        err = api_error(exc)
        return web.json_response(err.body(), status=err.status)
    status, body, headers = plain_error(exc)
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 413 (as JSON) for a body over ``request.client_max_size``, declared or read."""
    length = request.content_length
    if length is not None and length > request.client_max_size:
        return too_large(request)
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return too_large(request)
