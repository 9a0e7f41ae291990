"""Result validation's pure parts: the comparison, the tolerances and the trust ledger."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from server.validation import (
    Tolerance,
    TrustLedger,
    TrustPolicy,
    TrustState,
    Verdict,
    compare,
    quarantined,
    record,
    should_audit,
    tolerance_for,
)

AGREE = Verdict(True, 1e-7)
DISAGREE = Verdict(False, 0.05, "relative error 0.05 above 0.001")


def noisy(x: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    """``x`` plus noise of ``scale`` times each row's RMS (what ``--perturb`` does)."""
    g = torch.Generator().manual_seed(seed)
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return x + torch.randn(x.shape, generator=g) * rms * scale


# --- compare --------------------------------------------------------------------------


def test_identical_outputs_agree_with_zero_error() -> None:
    x = torch.randn(5, 64)
    verdict = compare(x, x.clone(), Tolerance(1e-3))
    assert verdict == Verdict(True, 0.0)


@pytest.mark.parametrize(
    ("scale", "tol", "agree"),
    [
        (1e-6, 1e-3, True),  # fp32 rounding noise
        (5e-4, 1e-3, True),
        (5e-3, 1e-3, False),
        (0.05, 1e-3, False),  # --perturb 0.05 against fp32
        (0.01, 3e-2, True),  # bf16 noise against the bf16 bound
        (0.05, 3e-2, False),  # --perturb 0.05 against bf16
    ],
)
def test_relative_noise_against_the_bound(scale: float, tol: float, agree: bool) -> None:
    x = torch.randn(7, 576)
    verdict = compare(x, noisy(x, scale), Tolerance(tol))
    assert verdict.agree is agree
    assert verdict.error == pytest.approx(scale, rel=0.25)
    assert (verdict.reason == "") is agree


def test_massive_activations_do_not_hide_noise_elsewhere() -> None:
    x = torch.randn(3, 576)
    x[:, 7] = 3000.0  # a Llama-style massive dimension on every token
    got = x.clone()
    got[:, 8:] += torch.randn(3, 568) * 0.3  # wrong everywhere but in the massive dimension
    assert compare(x, got, Tolerance(1e-3)).agree is False


def test_one_wrong_token_in_a_long_chunk_is_not_averaged_away() -> None:
    x = torch.randn(64, 96)
    got = x.clone()
    got[40] = noisy(x[40:41], 0.05)[0]
    verdict = compare(x, got, Tolerance(1e-3))
    assert not verdict.agree and verdict.error == pytest.approx(0.05, rel=0.3)


@pytest.mark.parametrize(
    ("got", "reason"),
    [
        (torch.zeros(2, 8), "shape"),
        (torch.full((3, 8), float("nan")), "non-finite"),
        (torch.full((3, 8), float("inf")), "non-finite"),
    ],
)
def test_unusable_outputs_disagree_outright(got: torch.Tensor, reason: str) -> None:
    verdict = compare(torch.ones(3, 8), got, Tolerance(0.5))
    assert not verdict.agree and verdict.error == math.inf and reason in verdict.reason


def test_dtypes_are_compared_in_float32() -> None:
    x = torch.randn(4, 64)
    assert compare(x, x.to(torch.bfloat16), Tolerance(3e-2)).agree
    assert not compare(x, x.to(torch.bfloat16), Tolerance(1e-4)).agree


def test_zero_rows_are_compared_absolutely() -> None:
    x = torch.zeros(2, 16)
    assert compare(x, x + 1e-9, Tolerance(1e-3)).agree
    assert not compare(x, x + 1.0, Tolerance(1e-3)).agree


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6), cols=st.integers(1, 40), seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
)
def test_compare_is_symmetric_in_scale_and_agrees_with_itself(rows: int, cols: int, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    y = noisy(x, 0.01, seed)
    assert compare(x, x, Tolerance(1e-6)).agree
    a, b = compare(x, y, Tolerance(0.02)), compare(x * scale, y * scale, Tolerance(0.02))
    assert a.agree == b.agree and a.error == pytest.approx(b.error, rel=1e-3, abs=1e-6)


# --- tolerances -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "device", "bound"),
    [
        ("float32", "cpu", 1e-3),
        ("float32", "cuda", 1e-2),
        ("float32", "mps", 1e-2),
        ("bfloat16", "cpu", 3e-2),
        ("bfloat16", "cuda", 4e-2),
        ("float32", "tpu", 1e-2),  # unknown device: the loosest bound of the dtype
        ("bfloat16", "tpu", 4e-2),
    ],
)
def test_tolerance_per_dtype_and_device(dtype: str, device: str, bound: float) -> None:
    assert tolerance_for(dtype, device) == Tolerance(bound)


def test_unknown_dtype_and_bad_bounds_are_refused() -> None:
    with pytest.raises(ConfigError, match="float16"):
        tolerance_for("float16", "cpu")
    with pytest.raises(ConfigError):
        Tolerance(0.0)
    with pytest.raises(ConfigError):
        Tolerance(1.5)


# --- the ledger -----------------------------------------------------------------------


def fold(ledger: TrustLedger, node: str, verdicts: list[Verdict]) -> TrustLedger:
    for i, verdict in enumerate(verdicts):
        ledger = record(ledger, node, verdict, now=float(i))
    return ledger


@pytest.mark.parametrize(
    ("verdicts", "state", "strikes", "verified", "streak"),
    [
        ([], TrustState.PROBATION, 0, 0, 0),
        ([AGREE] * 3, TrustState.PROBATION, 0, 3, 3),
        ([AGREE] * 4, TrustState.TRUSTED, 0, 4, 4),
        ([AGREE] * 4 + [DISAGREE], TrustState.PROBATION, 1, 4, 0),
        ([AGREE] * 4 + [DISAGREE] + [AGREE] * 4, TrustState.TRUSTED, 1, 8, 4),
        ([DISAGREE, DISAGREE], TrustState.PROBATION, 2, 0, 0),
        ([DISAGREE] * 3, TrustState.QUARANTINED, 3, 0, 0),
        ([DISAGREE, AGREE, DISAGREE, AGREE, AGREE, DISAGREE], TrustState.QUARANTINED, 3, 3, 0),
        ([DISAGREE] * 3 + [AGREE] * 10, TrustState.QUARANTINED, 3, 10, 10),  # quarantine is for good
    ],
)
def test_ledger_states(verdicts: list[Verdict], state: TrustState, strikes: int, verified: int, streak: int) -> None:
    ledger = fold(TrustLedger(TrustPolicy(probation_steps=4, strikes_to_quarantine=3)), "n1", verdicts)
    trust = ledger.get("n1")
    assert (trust.state, trust.strikes, trust.verified_steps, trust.clean_streak) == (state, strikes, verified, streak)
    assert trust.audits == len(verdicts)
    assert quarantined(ledger, "n1") is (state is TrustState.QUARANTINED)


def test_record_is_a_pure_fold_that_stamps_state_changes() -> None:
    empty = TrustLedger(TrustPolicy(probation_steps=2))
    once = record(empty, "n1", AGREE, now=10.0)
    assert empty.get("n1").audits == 0 and once.get("n1").audits == 1  # the old ledger is untouched
    assert once.get("n1").changed_at is None  # still on probation
    twice = record(once, "n1", AGREE, now=11.0)
    assert twice.get("n1").state is TrustState.TRUSTED and twice.get("n1").changed_at == 11.0
    assert twice.get("n2").state is TrustState.PROBATION  # others are unaffected
    with pytest.raises(TypeError):
        twice.volunteers["n3"] = twice.get("n1")  # type: ignore[index]


def test_audits_always_on_probation_and_after_a_strike_then_at_the_share() -> None:
    policy = TrustPolicy(verify_share=0.05, probation_steps=8, strikes_to_quarantine=3)
    ledger = TrustLedger(policy)
    rng = random.Random(7)
    assert all(should_audit(ledger, "n1", rng) for _ in range(100))
    ledger = fold(ledger, "n1", [AGREE] * 8)
    share = sum(should_audit(ledger, "n1", rng) for _ in range(20_000)) / 20_000
    assert 0.04 < share < 0.06
    ledger = record(ledger, "n1", DISAGREE, now=0.0)
    assert all(should_audit(ledger, "n1", rng) for _ in range(100))
    ledger = fold(ledger, "n1", [DISAGREE, DISAGREE])
    assert ledger.get("n1").state is TrustState.QUARANTINED
    assert all(should_audit(ledger, "n1", rng) for _ in range(100))  # late results are still checked


def test_checking_off() -> None:
    ledger = TrustLedger(TrustPolicy(verify_share=0.0, probation_steps=0))
    assert ledger.get("n1").state is TrustState.TRUSTED
    assert not any(should_audit(ledger, "n1", random.Random(1)) for _ in range(1000))


@pytest.mark.parametrize(
    "kwargs", [{"verify_share": -0.1}, {"verify_share": 1.1}, {"probation_steps": -1}, {"strikes_to_quarantine": 0}]
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TrustPolicy(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), max_size=80),
    probation=st.integers(0, 10),
    strikes_needed=st.integers(1, 5),
)
def test_ledger_invariants(outcomes: list[bool], probation: int, strikes_needed: int) -> None:
    policy = TrustPolicy(probation_steps=probation, strikes_to_quarantine=strikes_needed)
    ledger = TrustLedger(policy)
    for i, ok in enumerate(outcomes):
        before = ledger.get("n")
        ledger = record(ledger, "n", AGREE if ok else DISAGREE, now=float(i))
        after = ledger.get("n")
        if before.state is TrustState.QUARANTINED:
            assert after.state is TrustState.QUARANTINED
    trust = ledger.get("n")
    strikes = outcomes.count(False)
    assert trust.strikes == strikes and trust.verified_steps == outcomes.count(True) and trust.audits == len(outcomes)
    assert (trust.state is TrustState.QUARANTINED) == (strikes >= strikes_needed)
    if trust.state is not TrustState.QUARANTINED:
        streak = len(outcomes) - (max(i for i, ok in enumerate(outcomes) if not ok) + 1) if strikes else len(outcomes)
        assert trust.clean_streak == streak
        needed = max(probation, 1) if strikes else probation  # after a strike, at least one clean check
        assert (trust.state is TrustState.TRUSTED) == (streak >= needed)
