"""Rate and concurrency limits as pure values: token buckets, per-key limiters, per-key caps.

Nothing here reads a clock or touches a socket: every call takes ``now`` (seconds, any
monotonic origin), so the limits are deterministic in tests. The edges (the client API,
the volunteer websocket) feed them the time and turn a refusal into a 429 or a close.

A :class:`TokenBucket` holds up to ``burst`` units and refills at ``per_s`` units per
second. Taking ``n`` units needs ``min(n, burst)`` in the bucket and may leave it in debt:
an amount larger than the burst (one big websocket frame, one long answer) passes when
the bucket is full instead of never, and the debt is paid back before anything else passes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, replace

@dataclass(frozen=True, slots=True)
class Rate:
    """``per_s`` units per second sustained, at most ``burst`` at once; ``per_s == 0`` means unlimited."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_s) and self.per_s >= 0):
            raise ValueError(f"a rate must be a finite non-negative number, got {self.per_s!r}")
        if not self.unlimited and not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"a limited rate needs a burst of at least 1, got {self.burst!r}")

    @classmethod
    def per_minute(cls, amount: float) -> Rate:
        """``amount`` units a minute, all of which may be spent at once (0: unlimited)."""
        return cls(per_s=amount / 60.0, burst=float(amount))

    @property
    def unlimited(self) -> bool:
        """Whether this rate never refuses."""
        return self.per_s == 0


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A bucket of ``rate.burst`` units that refills at ``rate.per_s``; ``level`` as of time ``at``.

    Immutable: :meth:`take` and :meth:`charge` return the bucket after the change. Time
    that runs backwards (``now < at``) adds nothing.
    """

    rate: Rate
    level: float
    at: float

    @classmethod
    def full(cls, rate: Rate, now: float) -> TokenBucket:
        """A bucket holding its whole burst at ``now``."""
        return cls(rate, rate.burst, now)

    def level_at(self, now: float) -> float:
        """Units available at ``now`` (negative while in debt)."""
        if self.rate.unlimited:
            return math.inf
        return min(self.rate.burst, self.level + max(0.0, now - self.at) * self.rate.per_s)

    def is_full(self, now: float) -> bool:
        """Whether the bucket is back at its burst (then it is the same as a fresh one)."""
        return self.rate.unlimited or self.level_at(now) >= self.rate.burst

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until :meth:`take` of ``amount`` would pass (0: it passes now)."""
        if self.rate.unlimited:
            return 0.0
        need = min(amount, self.rate.burst)
        missing = need - self.level_at(now)
        return 0.0 if missing <= 0 else missing / self.rate.per_s

    def take(self, amount: float, now: float) -> TokenBucket | None:
        """The bucket after taking ``amount`` at ``now``, or None (nothing taken) if it may not pass yet."""
        if self.rate.unlimited:
            return self
        if self.wait_s(amount, now) > 0:
            return None
        return replace(self, level=self.level_at(now) - amount, at=max(now, self.at))

    def charge(self, amount: float, now: float) -> TokenBucket:
        """The bucket after spending ``amount`` that was already used: it may go into debt."""
        if self.rate.unlimited:
            return self
        return replace(self, level=self.level_at(now) - amount, at=max(now, self.at))


# --- the client API: requests and generated tokens per key -------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may run; if not, ``retry_after_s`` says when it would and ``reason`` why."""

    allowed: bool
    retry_after_s: float = 0.0
    reason: str = ""


ALLOWED = Verdict(True)


class ClientRateLimiter:
    """Requests per minute and generated tokens per minute, counted per client key.

    A request passes when its key has a request left *and* its token budget is not
    spent (at least one token left); the tokens a request generated are charged after
    the fact with :meth:`charge_tokens`, so one long answer can put a key into debt that
    later requests wait out. ``0`` for either rate means unlimited. At most ``max_keys``
    keys are tracked: beyond that, full buckets (the same as fresh ones) are forgotten
    first, then the oldest.
    """

    def __init__(self, *, requests_per_minute: int, tokens_per_minute: int, max_keys: int = 10_000) -> None:
        if requests_per_minute < 0 or tokens_per_minute < 0:
            raise ValueError("rate limits must be 0 (unlimited) or positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.requests = Rate.per_minute(requests_per_minute)
        self.tokens = Rate.per_minute(tokens_per_minute)
        self.max_keys = max_keys
        self._buckets: dict[Hashable, tuple[TokenBucket, TokenBucket]] = {}

    @property
    def unlimited(self) -> bool:
        """Whether this limiter never refuses."""
        return self.requests.unlimited and self.tokens.unlimited

    def admit(self, key: Hashable, now: float) -> Verdict:
        """Take one request for ``key`` at ``now`` if both its budgets allow it; say when to retry if not."""
        if self.unlimited:
            return ALLOWED
        requests, tokens = self._get(key, now)
        token_wait = tokens.wait_s(1, now)
        if token_wait > 0:
            return Verdict(False, token_wait, f"this key used its {self.tokens.burst:.0f} generated tokens a minute")
        taken = requests.take(1, now)
        if taken is None:
            return Verdict(
                False, requests.wait_s(1, now), f"this key used its {self.requests.burst:.0f} requests a minute"
            )
        self._buckets[key] = (taken, tokens)
        return ALLOWED

    def charge_tokens(self, key: Hashable, amount: int, now: float) -> None:
        """Count ``amount`` generated tokens against ``key`` (may leave its token budget in debt)."""
        if self.tokens.unlimited or amount <= 0:
            return
        requests, tokens = self._get(key, now)
        self._buckets[key] = (requests, tokens.charge(amount, now))

    def tracked(self) -> int:
        """How many keys have state (for tests and metrics)."""
        return len(self._buckets)

    def _get(self, key: Hashable, now: float) -> tuple[TokenBucket, TokenBucket]:
        found = self._buckets.get(key)
        if found is not None:
            return found
        if len(self._buckets) >= self.max_keys:
            self._forget(now)
        fresh = (TokenBucket.full(self.requests, now), TokenBucket.full(self.tokens, now))
        self._buckets[key] = fresh
        return fresh

    def _forget(self, now: float) -> None:
        for key in [k for k, (r, t) in self._buckets.items() if r.is_full(now) and t.is_full(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]


# --- one websocket connection: messages and bytes per second -----------------------------


class ConnectionRateLimiter:
    """Messages per second and bytes per second on one connection; refuses a flood.

    :meth:`admit` counts one received message of ``nbytes`` and returns None while the
    peer stays within both rates, or the reason it does not.
    """

    def __init__(self, *, messages: Rate, data_bytes: Rate, now: float) -> None:
        self._messages = TokenBucket.full(messages, now)
        self._bytes = TokenBucket.full(data_bytes, now)

    def admit(self, nbytes: int, now: float) -> str | None:
        """Count one message of ``nbytes`` at ``now``; the reason it breaks a limit, or None."""
        messages = self._messages.take(1, now)
        if messages is None:
            rate = self._messages.rate
            return f"more than {rate.per_s:g} messages/s (burst {rate.burst:.0f})"
        data = self._bytes.take(nbytes, now)
        if data is None:
            rate = self._bytes.rate
            return f"more than {rate.per_s / 2**20:g} MiB/s (burst {rate.burst / 2**20:g} MiB)"
        self._messages, self._bytes = messages, data
        return None


# --- concurrency per key -----------------------------------------------------------------


class ConcurrencyCap:
    """At most ``limit`` things at once per key (e.g. unauthenticated connections per IP address)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency cap must be at least 1")
        self.limit = limit
        self._counts: dict[Hashable, int] = {}

    def try_acquire(self, key: Hashable) -> bool:
        """Take one place for ``key``; False (nothing taken) when it already holds ``limit``."""
        count = self._counts.get(key, 0)
        if count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: Hashable) -> None:
        """Give back one place of ``key`` (a key that holds none is left alone)."""
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = count - 1

    def count(self, key: Hashable) -> int:
        """Places ``key`` holds now."""
        return self._counts.get(key, 0)


__all__ = [
    "ALLOWED",
    "ClientRateLimiter",
    "ConcurrencyCap",
    "ConnectionRateLimiter",
    "Rate",
    "TokenBucket",
    "Verdict",
]
