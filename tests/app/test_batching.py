"""Batch formation: which queued messages run together as one forward pass."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from app.batching import DEFAULT_MAX_BATCH, GATHER_CAP_S, GATHER_FRACTION, Entry, Step, gather_window_s, take_batch
from app.volunteer import Volunteer, VolunteerConfig
from core.protocol.codec import encode
from core.protocol.messages import Forward
from core.types import HardwareProfile, NodeId


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
        # decode steps and prefills do not mix
        ([p("s1"), d("s2"), d("s3")], 32, (0,)),
        ([d("s1"), p("s2"), d("s3")], 32, (0, 2)),
        # prefills queued back to back run together, up to the first decode step
        ([p("s1"), p("s2"), p("s3")], 32, (0, 1, 2)),
        ([p("s1"), p("s2"), d("s3"), p("s4")], 32, (0, 1)),
        ([p("s1"), p("s1"), p("s2")], 32, (0, 2)),
        ([p("s1"), p("s2", assignment="b"), p("s3")], 32, (0, 2)),
        # … and up to max_tokens (a longer head still runs)
        ([p("s1", 400), p("s2", 400), p("s3", 400)], 32, (0, 1)),
        ([p("s1", 2000), p("s2", 9)], 32, (0,)),
        ([p("s1"), p("s2"), p("s3")], 2, (0, 1)),
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
            assert len({e.tokens == 1 for e in steps}) == 1 and len({e.session_id for e in steps}) == len(steps)
            assert len({e.assignment_id for e in steps}) == 1 and len(steps) == len(batch)
            assert steps[0].tokens == 1 or sum(e.tokens for e in steps) <= 1024
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
            elif a.tokens == 1 and b.tokens > 1:  # no decode step waits for a prefill queued after it
                assert position[i] < position[j], (entries, order)


@pytest.mark.parametrize(
    ("ready", "sessions", "last_pass_s", "expected"),
    [
        (1, 1, 0.030, 0.0),  # a lone session never waits
        (4, 4, 0.030, 0.0),  # everyone is here
        (5, 4, 0.030, 0.0),
        (1, 8, 0.0, 0.0),  # nothing measured yet
        (1, 8, 0.010, 0.010),  # up to the last forward's time
        (7, 8, 0.010, 0.010),
        (1, 8, 1.0, GATHER_CAP_S),  # bounded
    ],
)
def test_gather_window(ready: int, sessions: int, last_pass_s: float, expected: float) -> None:
    assert gather_window_s(ready=ready, sessions=sessions, last_pass_s=last_pass_s) == pytest.approx(expected)



def _simulate_ring(*, sessions: int, cycles: int, fraction: float) -> list[int]:
    """Decode steps of ``sessions`` sessions that start together, going round a 3-stage ring and the coordinator.

    Each stage holds its batch open as the volunteer does (for the head's wave, up to
    :func:`gather_window_s` with ``fraction``) and then runs every step queued; a pass
    costs 10 ms plus 1 ms a step, and the coordinator samples the last stage's answers one
    by one and sends them back to the first stage 2 ms apart. Returns the size of each
    batch the first stage ran, in order.
    """
    stages = 3
    queues: list[dict[str, float]] = [{f"s{i}": 0.0 for i in range(sessions)}, {}, {}]  # session -> arrival
    waves: list[dict[str, frozenset[str]]] = [{} for _ in range(stages)]
    last_pass = [0.0] * stages
    free_at = [0.0] * stages
    sizes: list[int] = []
    while len(sizes) < cycles:
        starts = []
        for j in range(stages):
            if not queues[j]:
                continue
            now = max(free_at[j], min(queues[j].values()))
            head = min(queues[j], key=lambda s: queues[j][s])
            wave = waves[j].get(head, frozenset({head}))
            ready = sum(1 for s, t in queues[j].items() if s in wave and t <= now)
            window = gather_window_s(ready=ready, sessions=len(wave), last_pass_s=last_pass[j], fraction=fraction)
            due = [t for s, t in queues[j].items() if s in wave]
            start = max(now, min(now + window, max(due))) if len(due) == len(wave) else now + window
            starts.append((start, j))
        start, j = min(starts)
        batch = sorted((s for s, t in queues[j].items() if t <= start), key=lambda s: queues[j][s])
        cost = 0.010 + 0.001 * len(batch)
        free_at[j], last_pass[j] = start + cost, cost
        waves[j].update((s, frozenset(batch)) for s in batch)
        for k, s in enumerate(batch):
            del queues[j][s]
            queues[(j + 1) % stages][s] = start + cost + (0.002 * (k + 1) if j == stages - 1 else 0.0)
        if j == 0:
            sizes.append(len(batch))
    return sizes


def test_a_wave_that_starts_together_stays_together() -> None:
    """The coordinator's answers reach the first stage over 16 ms; a pass is 18 ms: the default window holds them."""
    assert _simulate_ring(sessions=8, cycles=30, fraction=GATHER_FRACTION) == [8] * 30


def test_a_window_shorter_than_the_stragglers_splits_the_wave_for_good() -> None:
    """Half a pass (9 ms) misses the last answers: the wave splits into two that never meet again."""
    sizes = _simulate_ring(sessions=8, cycles=30, fraction=0.5)
    assert sizes[0] == 8 and sizes[-10:] == [4] * 10, sizes


def _volunteer(tmp_path: Path, max_batch: int = DEFAULT_MAX_BATCH) -> Volunteer:
    config = VolunteerConfig(data_dir=tmp_path, url="ws://127.0.0.1:9/ws", insecure_loopback=True,
                             profile=HardwareProfile(node_id=NodeId("test")), max_batch=max_batch)
    return Volunteer(config)


def _forward(session: str, tokens: int, step: int) -> Forward:
    enc = encode(torch.zeros(tokens, 8), "model")
    return Forward(step_id=step, session_id=session, assignment_id="a", start_pos=0, x=enc.data, codec=enc.codec,
                   scales=enc.scales, logits_codec="model")


async def test_prompts_arriving_one_by_one_run_as_one_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.volunteer.PREFILL_GAP_S", 30.0)  # only arrivals end the wait here, never the clock
    v = _volunteer(tmp_path)
    backlog: deque = deque([_forward("s0", 5, 0)])

    async def arrive() -> None:
        for i in range(1, 4):
            await asyncio.sleep(0)
            v._queue.put_nowait(_forward(f"s{i}", 5 + i, i))
        await asyncio.sleep(0)
        v._queue.put_nowait(_forward("s0", 1, 9))  # a decode step cannot join: the prefills go now

    sender = asyncio.create_task(arrive())
    assert await v._gather(backlog) == (0, 1, 2, 3)
    await sender
    assert len(backlog) == 5


async def test_a_full_prefill_batch_does_not_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.volunteer.PREFILL_GAP_S", 30.0)
    v = _volunteer(tmp_path, max_batch=2)
    v._queue.put_nowait(_forward("s1", 5, 1))
    assert await v._gather(deque([_forward("s0", 5, 0)])) == (0, 1)


async def test_a_lone_prompt_waits_only_for_the_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.volunteer.PREFILL_GAP_S", 0.001)
    monkeypatch.setattr("app.volunteer.PREFILL_CAP_S", 30.0)
    assert await _volunteer(tmp_path)._gather(deque([_forward("s0", 5, 0)])) == (0,)
