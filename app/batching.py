"""Which queued work a volunteer runs next as one forward pass (continuous batching).

The volunteer's compute loop holds the messages that have arrived, in order. Each round it
asks :func:`take_batch` which of them to run now: decode steps (one new token each) of
*different* sessions on the *same* assignment run together as one packed forward, so each
weight matrix is read once for all of them, and so do prefills (or replayed chunks: more
than one token) of different sessions queued back to back. Sessions join and leave
between rounds.

The rules keep the meaning of the queue as if it ran one message at a time:

- the first entry is always taken; a control message (end of a session, an unassignment,
  shutdown) runs alone, in its place;
- decode steps and prefills never share a forward; a decode head takes the decode steps
  queued behind it, passing over prefills, while a prefill head takes only the prefills
  queued right behind it, up to the first decode step, so no decode step waits for a
  prefill that was queued after it;
- a control message is a barrier: nothing queued after it is taken before it;
- a session's steps keep their order: once one of its steps is passed over, none of its
  later steps is taken, and one batch holds at most one step per session;
- at most ``max_batch`` steps are taken, and prefills joining a prefill head bring the
  batch to at most ``max_tokens`` tokens (a longer head still runs, alone).

Prefills are batched so that sessions that start together run their prompts in one
forward at each stage and leave it together: they reach their decode steps as one wave
(below) instead of one by one. Prompts sent together arrive a few milliseconds apart, so
a prefill head is held open while they keep coming: until none arrives for
``PREFILL_GAP_S``, at most ``PREFILL_CAP_S`` in all. A lone prompt pays the gap once per
stage; a session whose prompt ran alone would stay a pass ahead of the others for good.

Sessions' steps do not arrive at once: the coordinator sends each as soon as that session's
previous step is back (and, at the first stage, its token is sampled), so a volunteer that
started at the first arrival would run one step alone and the rest together next, again
and again. :func:`gather_window_s` says how long to hold a batch open for the sessions that
ran with the head's session last time (its *wave*) and have not arrived yet: up to the last
forward's time, bounded, and never when the whole wave is there (so a lone session waits
for nothing). Waiting up to a whole forward is worth it: a straggler left behind costs a
forward of its own, which reads every weight again and costs about as much as the batch,
and it splits the wave for good. Sessions of other waves are not waited for: they are at
other stages of the pipeline, and on separate machines those stages then compute at the
same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_BATCH: int = 32
"""The most steps one forward pass packs together."""
DEFAULT_MAX_BATCH_TOKENS: int = 1024
"""The most tokens a forward of several prefills packs together."""
GATHER_FRACTION: float = 1.0
"""A batch is held open for at most this share of the last forward's time …"""
GATHER_CAP_S: float = 0.05
"""… and never longer than this."""
PREFILL_GAP_S: float = 0.004
"""A prefill batch is held open while another prefill arrives within this long of the last …"""
PREFILL_CAP_S: float = 0.05
"""… and never longer than this in all."""


@dataclass(frozen=True, slots=True)
class Step:
    """What batching needs to know of one queued forward step."""

    assignment_id: str
    session_id: str
    tokens: int


Entry = Step | None
"""A queued message: a forward step, or ``None`` for a control message (a barrier)."""


def take_batch(entries: Sequence[Entry], *, max_batch: int = DEFAULT_MAX_BATCH,
               max_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> tuple[int, ...]:
    """Indices (ascending) of the entries to run next as one forward; ``()`` only for no entries.

    The first entry is always included; see the module docstring for the rules.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if not entries:
        return ()
    head = entries[0]
    if head is None:
        return (0,)
    decode = head.tokens == 1
    taken = [0]
    tokens = head.tokens
    sessions = {head.session_id}
    passed: set[str] = set()
    for index in range(1, len(entries)):
        if len(taken) >= max_batch:
            break
        entry = entries[index]
        if entry is None or (not decode and entry.tokens == 1):
            break
        joins = (
            (entry.tokens == 1) == decode
            and entry.assignment_id == head.assignment_id
            and entry.session_id not in sessions
            and entry.session_id not in passed
        )
        if joins and not decode and tokens + entry.tokens > max_tokens:
            break
        if joins:
            taken.append(index)
            sessions.add(entry.session_id)
            tokens += entry.tokens
        else:
            passed.add(entry.session_id)
    return tuple(taken)


def gather_window_s(*, ready: int, sessions: int, last_pass_s: float, fraction: float = GATHER_FRACTION,
                    cap_s: float = GATHER_CAP_S) -> float:
    """How long to wait for more decode steps before running a batch (0: run now).

    ``sessions`` is how many sessions are expected (the head's wave, capped by the caller at
    ``max_batch``), ``ready`` how many of them are already queued; ``last_pass_s`` how long
    the stage's last forward took (0 when unknown: no wait, there is nothing to scale by).
    """
    if ready >= sessions or last_pass_s <= 0.0:
        return 0.0
    return min(cap_s, fraction * last_pass_s)


__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BATCH_TOKENS",
    "GATHER_CAP_S",
    "GATHER_FRACTION",
    "PREFILL_CAP_S",
    "PREFILL_GAP_S",
    "Entry",
    "Step",
    "gather_window_s",
    "take_batch",
]
