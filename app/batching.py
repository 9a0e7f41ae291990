"""Which queued work a volunteer runs next as one forward pass (continuous batching).

The volunteer's compute loop holds the messages that have arrived, in order. Each round it
asks :func:`take_batch` which of them to run now: decode steps (one new token each) of
*different* sessions on the *same* assignment run together as one packed forward, so each
weight matrix is read once for all of them; everything else runs alone. Sessions join
and leave between rounds.

The rules keep the meaning of the queue as if it ran one message at a time:

- the first entry is always taken, and it alone when it is not a decode step: a prefill
  or a replayed chunk (more than one token) runs alone, so its cost does not delay the
  decode steps more than it would anyway, and a control message (end of a session, an
  unassignment, shutdown) runs alone, in its place;
- a control message is a barrier: nothing queued after it is taken before it;
- a session's steps keep their order: once one of its steps is passed over, none of its
  later steps is taken, and one batch holds at most one step per session;
- at most ``max_batch`` steps are taken.

Sessions' steps do not arrive at once: the coordinator sends each as soon as that session's
previous step is back (and, at the first stage, its token is sampled), so a volunteer that
started at the first arrival would run one step alone and the rest together next, again
and again. :func:`gather_window_s` says how long to hold a batch open for the sessions that
ran with the head's session last time (its *wave*) and have not arrived yet: a fraction of
the last forward's time, bounded, and never when the whole wave is there (so a lone session
waits for nothing). Sessions of other waves are not waited for: they are at other stages
of the pipeline, and on separate machines those stages then compute at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_BATCH: int = 32
"""The most decode steps one forward pass packs together."""
GATHER_FRACTION: float = 0.5
"""A batch is held open for at most this share of the last forward's time …"""
GATHER_CAP_S: float = 0.02
"""… and never longer than this."""


@dataclass(frozen=True, slots=True)
class Step:
    """What batching needs to know of one queued forward step."""

    assignment_id: str
    session_id: str
    tokens: int


Entry = Step | None
"""A queued message: a forward step, or ``None`` for a control message (a barrier)."""


def take_batch(entries: Sequence[Entry], *, max_batch: int = DEFAULT_MAX_BATCH) -> tuple[int, ...]:
    """Indices (ascending) of the entries to run next as one forward; ``()`` only for no entries.

    The first entry is always included; see the module docstring for the rules.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if not entries:
        return ()
    head = entries[0]
    if head is None or head.tokens != 1:
        return (0,)
    taken = [0]
    sessions = {head.session_id}
    passed: set[str] = set()
    for index in range(1, len(entries)):
        if len(taken) >= max_batch:
            break
        entry = entries[index]
        if entry is None:
            break
        joins = (
            entry.tokens == 1
            and entry.assignment_id == head.assignment_id
            and entry.session_id not in sessions
            and entry.session_id not in passed
        )
        if joins:
            taken.append(index)
            sessions.add(entry.session_id)
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


__all__ = ["DEFAULT_MAX_BATCH", "GATHER_CAP_S", "GATHER_FRACTION", "Entry", "Step", "gather_window_s", "take_batch"]
