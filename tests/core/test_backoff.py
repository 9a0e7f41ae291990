"""Reconnect delays grow exponentially, are capped, and are jittered."""

from __future__ import annotations

import random

import pytest

from core.backoff import backoff_delay


def test_delays_are_within_the_exponential_bound_and_the_cap() -> None:
    rng = random.Random(1)
    for attempt in range(40):
        delay = backoff_delay(attempt, rng=rng, base_s=0.5, cap_s=30.0)
        assert 0.0 <= delay <= min(30.0, 0.5 * 2**attempt)


def test_jitter_spreads_many_volunteers() -> None:
    rng = random.Random(2)
    delays = [backoff_delay(5, rng=rng) for _ in range(200)]
    assert max(delays) - min(delays) > 5.0
    assert len({round(d, 3) for d in delays}) > 150


def test_seeded_rng_makes_delays_reproducible() -> None:
    assert backoff_delay(3, rng=random.Random(7)) == backoff_delay(3, rng=random.Random(7))


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay(-1, rng=random.Random(0))
