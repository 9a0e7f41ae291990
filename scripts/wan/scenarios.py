"""The WAN benchmark's scenario table and the lower bounds each measurement is compared with.

A scenario says what every host's link looks like (added round trip, loss, rate). Each
scenario is measured both ways hidden states can travel between stages:

- ``relay``: every stage is a round trip through the coordinator
  (coordinator -> stage -> coordinator), two one-way legs per stage per token;
- ``direct``: the coordinator sends the token to the first stage, each stage hands its
  output straight to the next one, the last answers the coordinator
  (coordinator -> s0 -> s1 -> ... -> coordinator), ``stages + 1`` one-way legs per token.

Every one-way leg crosses one delaying proxy that adds half the scenario's round trip,
so a leg costs ``rtt_ms / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LINKS = ("relay", "direct")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One network condition to measure under.

    ``rtt_ms`` is the round trip added between any two hosts (half of it each way, by the
    delaying proxy in front of the coordinator connection or the peer listener); ``loss``
    the emulated segment loss (see :mod:`scripts.wan.delay_proxy`); ``rate_mbit`` the
    ``tbf`` rate on every host's interface, both directions (None: unshaped).
    """

    name: str
    rtt_ms: float = 0.0
    loss: float = 0.0
    rto_ms: float = 200.0
    rate_mbit: float | None = None

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or not 0.0 <= self.loss < 1.0 or (self.rate_mbit is not None and self.rate_mbit <= 0):
            raise ValueError(f"invalid scenario {self}")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline"),
    Scenario("wan-20ms-100mbit", rtt_ms=20.0, rate_mbit=100.0),
    Scenario("wan-20ms-100mbit-lossy", rtt_ms=20.0, rate_mbit=100.0, loss=0.01),
)
"""Measured in this order; the first (no added latency, no shaping) provides the compute time."""


def one_way_legs(stages: int, links: str) -> int:
    """One-way link traversals on one token's path: ``2 × stages`` relayed, ``stages + 1`` direct."""
    if stages < 1:
        raise ValueError(f"a pipeline has at least one stage, got {stages}")
    if links == "relay":
        return 2 * stages
    if links == "direct":
        return stages + 1
    raise ValueError(f"links must be one of {LINKS}, got {links!r}")


def critical_bytes_per_token(sent: Sequence[float], received: Sequence[float], links: str) -> float:
    """Coordinator-link bytes per token that lie on the token's path, from per-stage counts.

    ``sent[i]`` / ``received[i]`` are the bytes per token the coordinator sends to and
    receives from stage ``i``. Relayed, every message is on the path (the stages run one
    after another). Direct, only the token to the first stage and the last stage's answer
    are: the copies the other stages return travel while later stages compute. Bytes
    handed between volunteers are not counted, so the result stays a lower bound.
    """
    if len(sent) != len(received) or not sent:
        raise ValueError(f"need one sent and one received count per stage, got {len(sent)} and {len(received)}")
    if links == "relay":
        return float(sum(sent) + sum(received))
    if links == "direct":
        return float(sent[0] + received[-1])
    raise ValueError(f"links must be one of {LINKS}, got {links!r}")


def lower_bound_step_s(compute_s: float, stages: int, scenario: Scenario, links: str, *,
                       wire_bytes_per_token: float = 0.0) -> float:
    """The least time one token can take: compute, the one-way legs its path needs at half the
    scenario's round trip each, and (with ``wire_bytes_per_token``, see
    :func:`critical_bytes_per_token`) the time those bytes occupy a link at the scenario's rate.

    The bytes term counts each byte once at the link rate: the messages on the path follow
    one another, and within a message the packets pipeline through the sender's and the
    receiver's shaped links.
    """
    step = compute_s + one_way_legs(stages, links) * scenario.rtt_ms / 2000.0
    if scenario.rate_mbit is not None and wire_bytes_per_token > 0:
        step += wire_bytes_per_token * 8.0 / (scenario.rate_mbit * 1e6)
    return step


def relay_lower_bound_step_s(compute_s: float, stages: int, scenario: Scenario, *, wire_bytes_per_token: float = 0.0) -> float:
    """:func:`lower_bound_step_s` for relayed stages (2 legs per stage)."""
    return lower_bound_step_s(compute_s, stages, scenario, "relay", wire_bytes_per_token=wire_bytes_per_token)


def direct_lower_bound_step_s(compute_s: float, stages: int, scenario: Scenario, *, wire_bytes_per_token: float = 0.0) -> float:
    """:func:`lower_bound_step_s` for direct links (``stages + 1`` legs)."""
    return lower_bound_step_s(compute_s, stages, scenario, "direct", wire_bytes_per_token=wire_bytes_per_token)


def efficiency(measured_tokens_per_s: float, bound_step_s: float) -> float:
    """Measured speed as a fraction of the speed the lower bound allows (1.0 = at the bound)."""
    return measured_tokens_per_s * bound_step_s


def alternating_order(rounds: int) -> list[str]:
    """The links of each timed answer: both per round, the first of each pair alternating
    (direct, relay, relay, direct, ...), so drift in the machine's load hits both alike."""
    if rounds < 1:
        raise ValueError(f"need at least one round, got {rounds}")
    order: list[str] = []
    for r in range(rounds):
        order += ["direct", "relay"] if r % 2 == 0 else ["relay", "direct"]
    return order


__all__ = [
    "LINKS", "SCENARIOS", "Scenario", "alternating_order", "critical_bytes_per_token", "direct_lower_bound_step_s",
    "efficiency", "lower_bound_step_s", "one_way_legs", "relay_lower_bound_step_s",
]
