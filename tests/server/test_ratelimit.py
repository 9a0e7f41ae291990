"""Token buckets and the limiters built on them, driven by explicit time (no clock, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.ratelimit import ClientRateLimiter, ConcurrencyCap, ConnectionRateLimiter, Rate, TokenBucket


def test_a_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(Rate(per_s=2.0, burst=4), now=0.0)
    for _ in range(4):
        bucket = bucket.take(1, now=0.0)
        assert bucket is not None
    assert bucket.take(1, now=0.0) is None
    assert bucket.wait_s(1, now=0.0) == pytest.approx(0.5)
    assert bucket.take(1, now=0.4) is None
    assert bucket.take(1, now=0.5) is not None
    assert bucket.level_at(100.0) == 4  # never above the burst


def test_time_running_backwards_adds_nothing() -> None:
    bucket = TokenBucket(Rate(per_s=1.0, burst=10), level=0.0, at=50.0)
    assert bucket.level_at(10.0) == 0.0
    assert bucket.take(1, now=10.0) is None


def test_an_amount_over_the_burst_passes_only_from_a_full_bucket_and_leaves_debt() -> None:
    rate = Rate(per_s=10.0, burst=100)
    bucket = TokenBucket.full(rate, now=0.0).take(250, now=0.0)
    assert bucket is not None and bucket.level == -150
    assert bucket.wait_s(1, now=0.0) == pytest.approx(15.1)
    half = TokenBucket(rate, level=50, at=0.0)
    assert half.take(250, now=0.0) is None and half.wait_s(250, now=0.0) == pytest.approx(5.0)


def test_charge_may_go_into_debt() -> None:
    bucket = TokenBucket.full(Rate.per_minute(60), now=0.0).charge(100, now=0.0)
    assert bucket.level == -40
    assert bucket.wait_s(1, now=0.0) == pytest.approx(41.0)


def test_a_zero_rate_is_unlimited() -> None:
    rate = Rate.per_minute(0)
    assert rate.unlimited
    bucket = TokenBucket.full(rate, now=0.0)
    assert bucket.take(10**9, now=0.0) is bucket and bucket.wait_s(10**9, now=0.0) == 0.0


@pytest.mark.parametrize(("per_s", "burst"), [(-1.0, 10), (float("nan"), 10), (1.0, 0.5), (1.0, float("inf"))])
def test_bad_rates_are_refused(per_s: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Rate(per_s=per_s, burst=burst)


@given(
    per_s=st.floats(0.1, 100), burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 5), st.floats(0.1, 20)), max_size=40),
)
def test_a_bucket_never_lets_more_pass_than_burst_plus_rate_times_time(
    per_s: float, burst: int, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket.full(Rate(per_s=per_s, burst=burst), now=0.0)
    now, passed = 0.0, 0.0
    for dt, amount in steps:
        now += dt
        taken = bucket.take(amount, now)
        if taken is not None:
            bucket, passed = taken, passed + amount
        assert passed <= burst + per_s * now + max(a for _, a in steps) + 1e-6
        # When refused, waiting the promised time is enough.
        if taken is None:
            assert bucket.take(amount, now + bucket.wait_s(amount, now) + 1e-9) is not None


def test_client_limiter_counts_requests_per_key() -> None:
    limiter = ClientRateLimiter(requests_per_minute=3, tokens_per_minute=0)
    assert all(limiter.admit("a", 0.0).allowed for _ in range(3))
    refused = limiter.admit("a", 0.0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(20.0) and "requests" in refused.reason
    assert limiter.admit("b", 0.0).allowed
    assert limiter.admit("a", 20.0).allowed


def test_client_limiter_refuses_a_key_whose_tokens_are_spent_until_the_debt_is_paid() -> None:
    limiter = ClientRateLimiter(requests_per_minute=0, tokens_per_minute=600)  # 10 tokens/s
    assert limiter.admit("k", 0.0).allowed
    limiter.charge_tokens("k", 1000, 0.0)  # one long answer: 400 tokens of debt
    refused = limiter.admit("k", 1.0)
    assert not refused.allowed and "tokens" in refused.reason
    assert refused.retry_after_s == pytest.approx(39.1)  # (-390 -> 1) at 10 tokens/s
    assert limiter.admit("k", 40.1).allowed
    assert limiter.admit("other", 1.0).allowed


def test_a_refused_request_takes_nothing() -> None:
    limiter = ClientRateLimiter(requests_per_minute=60, tokens_per_minute=60)
    limiter.charge_tokens("k", 61, 0.0)
    assert not limiter.admit("k", 0.0).allowed
    limiter.charge_tokens("k", -5, 0.0)  # negative amounts are ignored
    assert limiter.admit("k", 2.0).allowed  # the request budget is still whole


def test_unlimited_client_limiter_keeps_no_state() -> None:
    limiter = ClientRateLimiter(requests_per_minute=0, tokens_per_minute=0)
    for i in range(100):
        assert limiter.admit(f"k{i}", 0.0).allowed
        limiter.charge_tokens(f"k{i}", 10**6, 0.0)
    assert limiter.unlimited and limiter.tracked() == 0


def test_client_limiter_forgets_idle_keys_first_when_full() -> None:
    limiter = ClientRateLimiter(requests_per_minute=60, tokens_per_minute=0, max_keys=3)
    for key in ("idle1", "idle2", "busy"):
        limiter.admit(key, 0.0)
    for _ in range(59):
        limiter.admit("busy", 59.0)
    limiter.admit("new", 60.0)  # idle1 and idle2 are full again by now: they go, busy stays
    assert limiter.tracked() == 2
    # busy kept its state: 2 requests left at t=60, where a fresh key would have 60.
    assert [limiter.admit("busy", 60.0).allowed for _ in range(3)] == [True, True, False]
    for i in range(10):
        limiter.admit(f"flood{i}", 60.0)
    assert limiter.tracked() <= 3


def test_connection_limiter_reports_a_message_flood() -> None:
    limiter = ConnectionRateLimiter(messages=Rate(per_s=100, burst=200), data_bytes=Rate(per_s=10**9, burst=10**9), now=0.0)
    results = [limiter.admit(10, 0.0) for _ in range(201)]
    assert results[:200] == [None] * 200
    assert results[200] is not None and "messages/s" in results[200]
    assert limiter.admit(10, 0.02) is None  # 2 more messages' worth after 20 ms


def test_connection_limiter_reports_a_byte_flood_and_lets_one_big_frame_through() -> None:
    mib = 2**20
    limiter = ConnectionRateLimiter(messages=Rate(per_s=1000, burst=1000), data_bytes=Rate(per_s=10 * mib, burst=20 * mib), now=0.0)
    assert limiter.admit(64 * mib, 0.0) is None  # larger than the burst, but the bucket was full
    problem = limiter.admit(1, 1.0)
    assert problem is not None and "MiB/s" in problem
    assert limiter.admit(1, 4.5) is None  # 44 MiB of debt paid back at 10 MiB/s


def test_concurrency_cap_per_key() -> None:
    cap = ConcurrencyCap(2)
    assert cap.try_acquire("1.2.3.4") and cap.try_acquire("1.2.3.4")
    assert not cap.try_acquire("1.2.3.4")
    assert cap.try_acquire("5.6.7.8")
    cap.release("1.2.3.4")
    assert cap.count("1.2.3.4") == 1 and cap.try_acquire("1.2.3.4")
    for _ in range(5):
        cap.release("5.6.7.8")  # releasing more than was taken is harmless
    assert cap.count("5.6.7.8") == 0
    with pytest.raises(ValueError):
        ConcurrencyCap(0)
