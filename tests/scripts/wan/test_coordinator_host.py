"""The coordinator host's check that a direct answer really went volunteer to volunteer."""

from __future__ import annotations

from cli.bench_report import Run
from scripts.wan.coordinator_host import Answer, fully_handed_off


def _answer(handed_off: int, steps: int) -> Answer:
    return Answer("direct", Run(0.1, 10.0, 1.0, steps), list(range(steps)), handed_off_steps=handed_off, steps=steps)


def test_every_stage_but_the_last_must_hand_every_step_on() -> None:
    assert fully_handed_off(_answer(16, 8), stages=3)  # 2 hand-offs per step
    assert not fully_handed_off(_answer(15, 8), stages=3)  # one step relayed (a peer link not up yet)
    assert not fully_handed_off(_answer(0, 8), stages=3)
    assert fully_handed_off(_answer(0, 8), stages=1)  # a single stage has no one to hand to
    assert not fully_handed_off(_answer(0, 0), stages=3)  # no steps: nothing shown
