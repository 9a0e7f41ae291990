"""HTTP(S) requests from the command line to a coordinator, pinned to its pool key.

A pool's certificate is self-signed with the pool key (see :mod:`core.tls`), so the
command-line clients do not ask the system's CAs; they trust the key. Pass the pool id
(``--pool-id`` or ``BUTTERFLY_POOL_ID``, printed by ``butterfly coordinator``) to pin
it; without one the key is trusted on first use and its id printed, so it can be
compared with what the host published.
"""

from __future__ import annotations

import sys
import urllib.request
from typing import IO

from core.tls import pinned_https_context


def open_url(request: urllib.request.Request | str, *, pool_id: str | None = None, timeout: float = 30.0) -> IO[bytes]:
    """``urllib.request.urlopen`` that pins the pool key for ``https://`` addresses."""
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    context = None
    if url.startswith("https://"):
        context, seen = pinned_https_context(url, pool_id, timeout=timeout)
        if pool_id is None:
            print(f"butterfly: trusting pool {seen} (pass --pool-id {seen} to pin it)", file=sys.stderr)
    return urllib.request.urlopen(request, timeout=timeout, context=context)  # noqa: S310 - user-given coordinator URL


__all__ = ["open_url"]
