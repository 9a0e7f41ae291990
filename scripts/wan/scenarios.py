"""The WAN benchmark's scenario table and the lower bound each measurement is compared with.

A scenario says what every host's link looks like (added round trip, loss, rate) and how
hidden states travel between stages. ``relay`` is the pool as built today: every stage is a
round trip to the coordinator. ``direct`` is volunteer-to-volunteer forwarding (the
coordinator sends the token to the first stage, each stage hands its output to the next,
the last answers the coordinator): a scenario with ``links="direct"`` runs once the pool
can build such pipelines, and :func:`legs_per_token` already prices it.
"""

from __future__ import annotations

from dataclasses import dataclass

LINKS = ("relay", "direct")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One network condition to measure under.

    ``rtt_ms`` is the round trip added to every host's link to the coordinator (half of it
    each way, by the delaying proxy); ``loss`` the emulated segment loss (see
    :mod:`scripts.wan.delay_proxy`); ``rate_mbit`` the ``tbf`` rate on every host's
    interface, both directions (None: unshaped); ``links`` how stages are chained.
    """

    name: str
    rtt_ms: float = 0.0
    loss: float = 0.0
    rto_ms: float = 200.0
    rate_mbit: float | None = None
    links: str = "relay"

    def __post_init__(self) -> None:
        if self.links not in LINKS:
            raise ValueError(f"links must be one of {LINKS}, got {self.links!r}")
        if self.rtt_ms < 0 or not 0.0 <= self.loss < 1.0 or (self.rate_mbit is not None and self.rate_mbit <= 0):
            raise ValueError(f"invalid scenario {self}")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline"),
    Scenario("wan-20ms-100mbit", rtt_ms=20.0, rate_mbit=100.0),
    Scenario("wan-20ms-100mbit-lossy", rtt_ms=20.0, rate_mbit=100.0, loss=0.01),
)
"""Measured in this order; the first (no added latency, no shaping) provides the compute time."""


def legs_per_token(stages: int, links: str) -> float:
    """One-way link traversals of one token, in round trips: ``stages`` relayed, ``(stages + 1) / 2`` direct."""
    if stages < 1:
        raise ValueError(f"a pipeline has at least one stage, got {stages}")
    if links == "relay":
        return float(stages)
    if links == "direct":
        return (stages + 1) / 2.0
    raise ValueError(f"links must be one of {LINKS}, got {links!r}")


def lower_bound_step_s(compute_s: float, stages: int, scenario: Scenario, *, wire_bytes_per_token: float = 0.0) -> float:
    """The least time one token can take: compute, the round trips its path needs, and (with
    ``wire_bytes_per_token``) the time those bytes occupy a link at the scenario's rate.

    The bytes term counts every byte of the token once at the link rate: the stages run
    one after another, so their messages do not overlap in time, and within a message the
    packets pipeline through the sender's and the receiver's shaped links.
    """
    step = compute_s + legs_per_token(stages, scenario.links) * scenario.rtt_ms / 1000.0
    if scenario.rate_mbit is not None and wire_bytes_per_token > 0:
        step += wire_bytes_per_token * 8.0 / (scenario.rate_mbit * 1e6)
    return step


def efficiency(measured_tokens_per_s: float, bound_step_s: float) -> float:
    """Measured speed as a fraction of the speed the lower bound allows (1.0 = at the bound)."""
    return measured_tokens_per_s * bound_step_s


__all__ = ["LINKS", "SCENARIOS", "Scenario", "efficiency", "legs_per_token", "lower_bound_step_s"]
