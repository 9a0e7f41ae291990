"""Batch formation: which queued messages run together as one forward pass."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.batching import GATHER_CAP_S, Entry, Step, gather_window_s, take_batch


def d(session: str, assignment: str = "a") -> Step:
    """A decode step (one token)."""
    return Step(assignment, session, 1)


def p(session: str, tokens: int = 9, assignment: str = "a") -> Step:
    """A prefill (or replayed chunk) of several tokens."""
    return Step(assignment, session, tokens)


CONTROL = None


@pytest.mark.parametrize(
    ("entries", "max_batch", "expected"),
    [
        ([], 32, ()),
        ([d("s1")], 32, (0,)),
        ([d("s1"), d("s2"), d("s3")], 32, (0, 1, 2)),
        # a prefill runs alone, at the head or when met later
        ([p("s1"), d("s2"), d("s3")], 32, (0,)),
        ([d("s1"), p("s2"), d("s3")], 32, (0, 2)),
        # a control message runs alone and nothing passes it
        ([CONTROL, d("s1"), d("s2")], 32, (0,)),
        ([d("s1"), d("s2"), CONTROL, d("s3")], 32, (0, 1)),
        # one step per session, and a passed-over session takes no later step
        ([d("s1"), d("s1"), d("s2")], 32, (0, 2)),
        ([d("s1"), p("s2"), d("s2"), d("s3")], 32, (0, 3)),
        ([d("s1"), d("s2", "b"), d("s2"), d("s3")], 32, (0, 3)),
        ([d("s1"), d("s1"), d("s1")], 32, (0,)),
        # only the head's assignment joins
        ([d("s1", "b"), d("s2", "a"), d("s3", "b")], 32, (0, 2)),
        # bounded
        ([d(f"s{i}") for i in range(10)], 4, (0, 1, 2, 3)),
        ([d(f"s{i}") for i in range(10)], 1, (0,)),
        ([d("s0"), p("s1"), d("s2"), d("s3"), d("s4")], 3, (0, 2, 3)),
    ],
)
def test_take_batch(entries: list[Entry], max_batch: int, expected: tuple[int, ...]) -> None:
    assert take_batch(entries, max_batch=max_batch) == expected


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        take_batch([d("s1")], max_batch=0)


entries_strategy = st.lists(
    st.one_of(
        st.none(),
        st.builds(Step, st.sampled_from(["a", "b"]), st.sampled_from(["s1", "s2", "s3", "s4"]), st.sampled_from([1, 1, 1, 5])),
    ),
    max_size=12,
)


@given(entries=entries_strategy, max_batch=st.integers(1, 6))
def test_draining_in_batches_keeps_every_session_and_barrier_in_order(entries: list[Entry], max_batch: int) -> None:
    """Run the queue batch by batch: each session's steps and each barrier keep their relative order."""
    queue = list(enumerate(entries))
    order: list[int] = []
    while queue:
        picked = take_batch([e for _, e in queue], max_batch=max_batch)
        assert picked and picked[0] == 0 and list(picked) == sorted(set(picked)) and len(picked) <= max_batch
        batch = [queue[i] for i in picked]
        steps = [e for _, e in batch if e is not None]
        if len(batch) > 1:
            assert all(e.tokens == 1 for e in steps) and len({e.session_id for e in steps}) == len(steps)
            assert len({e.assignment_id for e in steps}) == 1 and len(steps) == len(batch)
        order.extend(i for i, _ in batch)
        queue = [q for k, q in enumerate(queue) if k not in set(picked)]
    assert sorted(order) == list(range(len(entries)))
    position = {original: rank for rank, original in enumerate(order)}
    for i, a in enumerate(entries):
        for j in range(i + 1, len(entries)):
            b = entries[j]
            same_session = a is not None and b is not None and a.session_id == b.session_id
            if a is None or b is None or same_session:
                assert position[i] < position[j], (entries, order)


@pytest.mark.parametrize(
    ("ready", "sessions", "last_pass_s", "expected"),
    [
        (1, 1, 0.030, 0.0),  # a lone session never waits
        (4, 4, 0.030, 0.0),  # everyone is here
        (5, 4, 0.030, 0.0),
        (1, 8, 0.0, 0.0),  # nothing measured yet
        (1, 8, 0.010, 0.005),  # half the last forward's time
        (7, 8, 0.010, 0.005),
        (1, 8, 1.0, GATHER_CAP_S),  # bounded
    ],
)
def test_gather_window(ready: int, sessions: int, last_pass_s: float, expected: float) -> None:
    assert gather_window_s(ready=ready, sessions=sessions, last_pass_s=last_pass_s) == pytest.approx(expected)
