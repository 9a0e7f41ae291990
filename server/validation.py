"""Result validation: how far a volunteer's output may stray, and how much the pool trusts it.

Anyone may volunteer, so a stage's output is a claim, not a fact. The pool checks claims
the way BOINC's *adaptive replication* does: a share of steps is recomputed (here by the
coordinator, :mod:`server.verifier`) and compared; how large that share is depends on the
volunteer's record.

- **Probation.** A newcomer has every step checked until it has agreed
  ``probation_steps`` times in a row (default 64). A wrong answer during probation is
  caught at once, and the step is answered with the coordinator's own output.
- **Trusted.** Afterwards only a random ``verify_share`` of its steps is checked
  (default 5 %). A volunteer that turns bad is caught after about ``1 / verify_share``
  steps on average; everything it computed meanwhile is only as good as the sampling.
- **A strike** (a disagreement) puts the volunteer back on probation, so every later step
  of it is checked until it has a clean streak again: once caught, a cheater cannot slip a
  wrong step past the pool. After ``strikes_to_quarantine`` strikes (default 3) it is
  **quarantined**: no more work, and its layers go to others. Strikes do not expire:
  honest volunteers do not disagree at all (see below), so even one strike means
  something is wrong with that machine.

Comparison (:func:`compare`) is per token: for each row of the output (one token's hidden
state, or the logits of the last token) the relative L2 error
``‖got − expected‖ / ‖expected‖``, and the worst row decides. Relative L2 and not a maximum
absolute difference, because hidden states of Llama-family models have a few *massive*
dimensions (hundreds of times the typical value, mostly on the first token): an absolute
or max-relative bound either drowns in them or misses noise on every other dimension.
Per row, so that one wrong token in a long prefill chunk is not averaged away.

The tolerance depends on the dtype and device mix (:func:`tolerance_for`). The verifier
runs the same code on the same weights, so an honest volunteer differs only by the order
of floating-point additions (thread counts, chunking of the KV cache catch-up, other
kernels on another device):

Measured on the default model (the verifier's cache caught up in one chunk, the
volunteer's filled step by step, other thread counts):

- ``float32`` on a CPU: worst row 1.2e-6 (10-layer stages). Bound **1e-3** — far above
  that noise, and fifty times below a 5 % perturbation.
- ``float32`` on CUDA/MPS: 8e-7 on an H100 with plain fp32 matmuls, 4e-4 with TF32 allowed
  (10-bit mantissa). Bound **1e-2**.
- ``bfloat16`` on a CPU: 8-bit mantissa (~4e-3 per rounding), compounded over the stage's
  layers: worst row 9e-3 (10-layer stages; 0 when both caches were filled alike). Bound
  **3e-2**, three times that noise.
- ``bfloat16`` on CUDA/MPS: other kernels add their own rounding: 1e-2 on six layers on an
  H100. Bound **4e-2**.

A cheater's noise must be larger than the bound to be seen; anything smaller is within
the model's own noise floor in that dtype.

Everything here is pure: time (``now``) and randomness (``rng``) are parameters.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch

from core.errors import ConfigError

_ROW_FLOOR = 1e-6
"""Rows whose expected norm is below this (per sqrt of width) are compared absolutely."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """The largest per-row relative L2 error an honest stage may show."""

    max_rel_error: float

    def __post_init__(self) -> None:
        if not 0.0 < self.max_rel_error < 1.0:
            raise ConfigError(f"a tolerance must lie in (0, 1), got {self.max_rel_error}")


TOLERANCES: Mapping[tuple[str, str], Tolerance] = MappingProxyType({
    ("float32", "cpu"): Tolerance(1e-3),
    ("float32", "cuda"): Tolerance(1e-2),
    ("float32", "mps"): Tolerance(1e-2),
    ("bfloat16", "cpu"): Tolerance(3e-2),
    ("bfloat16", "cuda"): Tolerance(4e-2),
    ("bfloat16", "mps"): Tolerance(4e-2),
})
"""Tolerance per (compute dtype, volunteer device); the verifier always computes on a CPU."""


def tolerance_for(dtype: str, device: str) -> Tolerance:
    """The tolerance for a volunteer computing in ``dtype`` on ``device`` (the loosest one for an unknown device)."""
    known = TOLERANCES.get((dtype, device))
    if known is not None:
        return known
    same_dtype = [t.max_rel_error for (d, _), t in TOLERANCES.items() if d == dtype]
    if not same_dtype:
        raise ConfigError(f"no tolerance is known for compute dtype {dtype!r}", hint="use float32 or bfloat16")
    return Tolerance(max(same_dtype))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one comparison: ``error`` is the worst row's relative L2 error (inf if unusable)."""

    agree: bool
    error: float
    reason: str = ""


def compare(expected: torch.Tensor, got: torch.Tensor, tol: Tolerance) -> Verdict:
    """Whether ``got`` equals ``expected`` within ``tol``, row by row (last dimension = one row).

    A different shape or a non-finite value in ``got`` disagrees outright. Pure.
    """
    if tuple(got.shape) != tuple(expected.shape):
        return Verdict(False, math.inf, f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}")
    if got.numel() == 0:
        return Verdict(True, 0.0)
    g = got.detach().to(torch.float32).reshape(-1, got.shape[-1])
    if not bool(torch.isfinite(g).all()):
        return Verdict(False, math.inf, "non-finite values")
    e = expected.detach().to(torch.float32).reshape(-1, expected.shape[-1])
    floor = _ROW_FLOOR * math.sqrt(e.shape[-1])
    errors = torch.linalg.vector_norm(g - e, dim=-1) / torch.linalg.vector_norm(e, dim=-1).clamp_min(floor)
    worst = float(errors.max())
    if worst <= tol.max_rel_error:
        return Verdict(True, worst)
    return Verdict(False, worst, f"relative error {worst:.3g} above {tol.max_rel_error:g}")


# --- trust ----------------------------------------------------------------------------


class TrustState(enum.Enum):
    """Where a volunteer stands: every step checked, a share checked, or no more work."""

    PROBATION = "probation"
    TRUSTED = "trusted"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """How much checking the pool does (see the module docstring for the reasoning)."""

    verify_share: float = 0.05
    probation_steps: int = 64
    strikes_to_quarantine: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.verify_share <= 1.0:
            raise ConfigError(f"verify_share must lie in [0, 1], got {self.verify_share}")
        if self.probation_steps < 0:
            raise ConfigError(f"probation_steps must be at least 0, got {self.probation_steps}")
        if self.strikes_to_quarantine < 1:
            raise ConfigError(f"strikes_to_quarantine must be at least 1, got {self.strikes_to_quarantine}")


@dataclass(frozen=True, slots=True)
class VolunteerTrust:
    """One volunteer's record.

    ``verified_steps`` counts checked steps that agreed, ever; ``clean_streak`` those since
    it joined or last disagreed; ``audits`` every checked step; ``last_error`` the error of
    the latest check; ``changed_at`` when ``state`` last changed (None: never).
    """

    state: TrustState
    verified_steps: int = 0
    clean_streak: int = 0
    strikes: int = 0
    audits: int = 0
    last_error: float = 0.0
    changed_at: float | None = None


@dataclass(frozen=True, slots=True)
class TrustLedger:
    """Every volunteer's record under one policy; change it only with :func:`record`."""

    policy: TrustPolicy = TrustPolicy()
    volunteers: Mapping[str, VolunteerTrust] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, node_id: str) -> VolunteerTrust:
        """The record of ``node_id``; a volunteer never checked starts on probation (if the policy has one)."""
        known = self.volunteers.get(node_id)
        if known is not None:
            return known
        return VolunteerTrust(TrustState.PROBATION if self.policy.probation_steps > 0 else TrustState.TRUSTED)


def should_audit(ledger: TrustLedger, node_id: str, rng: random.Random) -> bool:
    """Whether to check this step of ``node_id``: always on probation or quarantined, else with ``verify_share``."""
    state = ledger.get(node_id).state
    if state is not TrustState.TRUSTED:
        return True
    share = ledger.policy.verify_share
    return share > 0.0 and rng.random() < share


def record(ledger: TrustLedger, node_id: str, verdict: Verdict, *, now: float) -> TrustLedger:
    """The ledger after one check of ``node_id``: an agreement counts, a disagreement is a strike.

    A strike restarts probation (which then lasts at least one check, even when
    ``probation_steps`` is 0); the ``strikes_to_quarantine``-th quarantines for good.
    """
    policy = ledger.policy
    old = ledger.get(node_id)
    if verdict.agree:
        streak = old.clean_streak + 1
        state = old.state
        if state is TrustState.PROBATION and streak >= policy.probation_steps:
            state = TrustState.TRUSTED
        new = replace(old, verified_steps=old.verified_steps + 1, clean_streak=streak, audits=old.audits + 1,
                      last_error=verdict.error, state=state)
    else:
        strikes = old.strikes + 1
        state = TrustState.QUARANTINED if strikes >= policy.strikes_to_quarantine else TrustState.PROBATION
        if old.state is TrustState.QUARANTINED:
            state = TrustState.QUARANTINED
        new = replace(old, strikes=strikes, clean_streak=0, audits=old.audits + 1, last_error=verdict.error, state=state)
    if new.state is not old.state:
        new = replace(new, changed_at=now)
    volunteers = dict(ledger.volunteers)
    volunteers[node_id] = new
    return replace(ledger, volunteers=MappingProxyType(volunteers))


def quarantined(ledger: TrustLedger, node_id: str) -> bool:
    """Whether ``node_id`` is quarantined."""
    return ledger.get(node_id).state is TrustState.QUARANTINED


__all__ = [
    "TOLERANCES",
    "Tolerance",
    "TrustLedger",
    "TrustPolicy",
    "TrustState",
    "Verdict",
    "VolunteerTrust",
    "compare",
    "quarantined",
    "record",
    "should_audit",
    "tolerance_for",
]
