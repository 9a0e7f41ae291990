"""The coordinator's handle on a volunteer: codec choice per link, stall times, and relaying a lost hand-off."""

from __future__ import annotations

import math

import pytest

from core.errors import ConfigError
from core.protocol.codec import CODECS
from server.config import LOGITS_CODECS, WIRE_CODECS
from server.links import FAST_LINK_BYTES_PER_S, choose_codec


@pytest.mark.parametrize(
    ("setting", "bandwidth", "expected"),
    [
        ("auto", math.inf, "model"),  # not measured: exact
        ("auto", 2e9, "model"),  # loopback
        ("auto", FAST_LINK_BYTES_PER_S, "model"),
        ("auto", FAST_LINK_BYTES_PER_S * 0.99, "float16"),
        ("auto", 1.2e6, "float16"),  # 10 Mbit/s
        ("auto", 0.0, "float16"),
        ("int8", 2e9, "int8"),
        ("model", 1.0, "model"),
        ("bfloat16", math.inf, "bfloat16"),
    ],
)
def test_choose_codec(setting: str, bandwidth: float, expected: str) -> None:
    assert choose_codec(setting, bandwidth) == expected


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown wire codec 'zstd'"):
        choose_codec("zstd", 1.0)


def test_the_settings_name_exactly_the_codecs() -> None:
    assert WIRE_CODECS == ("auto", *CODECS)
    assert set(LOGITS_CODECS) <= set(CODECS)


async def test_a_step_queued_behind_other_sessions_gets_their_time_too() -> None:
    import asyncio

    from core.types import HardwareProfile, NodeId
    from server.health import STALL_FACTOR
    from server.links import VolunteerLink, _Pending

    link = VolunteerLink(object(), node_id=NodeId("n"), name="v", os_name="", model=None,  # type: ignore[arg-type]
                         profile=HardwareProfile(node_id=NodeId("n"), seconds_per_layer=0.1), step_timeout_s=600.0,
                         on_event=lambda *_: None)
    alone = link.step_timeout(tokens=1, layers=10)
    assert alone == pytest.approx(STALL_FACTOR * 1.0)
    loop = asyncio.get_running_loop()
    for step in range(4):  # four other sessions' decode steps of 10 layers wait ahead
        link._pending[step] = _Pending(loop.create_future(), 0.0, 1, 10.0)
    assert link._queued_s() == pytest.approx(4.0)
    assert link.step_timeout(tokens=1, layers=10, queued_s=link._queued_s()) == pytest.approx(STALL_FACTOR * 5.0)


class _PairedChannel:
    """The coordinator's end of a serving connection whose frames go straight into the volunteer's
    state machine (both real :class:`ProtocolConnection` objects; no socket)."""

    def __init__(self) -> None:
        from tests.core.protocol.test_session import serving

        self.pair = serving("a1")
        self.received: list[object] = []  # what the volunteer's end accepted
        self.closed_with: int | None = None

    async def send(self, msg: object) -> None:
        self.pair.c.send(msg)  # type: ignore[arg-type]
        for frame in self.pair.c.data_to_send():
            self.pair.v.receive(frame)
        self.received += self.pair.v.events()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


def _direct_link(ceiling_s: float, model=None):  # noqa: ANN001, ANN202
    from core.types import HardwareProfile, LayerRange, NodeId
    from server.links import LoadState, VolunteerLink

    channel = _PairedChannel()
    link = VolunteerLink(channel, node_id=NodeId("n"), name="v", os_name="", model=model,  # type: ignore[arg-type]
                         profile=HardwareProfile(node_id=NodeId("n"), seconds_per_layer=0.001), step_timeout_s=600.0,
                         on_event=lambda *_: None)
    link.stall_ceiling_s = ceiling_s
    link.loads["a1"] = LoadState("a1", LayerRange(2, 4, 6), 0, 2.0)
    return link, channel


async def test_a_step_whose_hand_off_never_came_is_fed_by_relay_at_half_the_stall_time(tiny_model) -> None:  # noqa: ANN001
    import asyncio
    import time

    import torch

    from core.protocol.messages import Feed, Forward, Result

    link, channel = _direct_link(0.6, tiny_model)
    step = link.open_step(assignment_id="a1", tokens=1)
    await link.send_step(step, session_id="s1", assignment_id="a1", start_pos=5, x=None, from_node="bf1upstream")
    assert isinstance(channel.received[-1], Forward) and channel.received[-1].awaits_input

    async def volunteer_answers_when_fed() -> None:
        while not any(isinstance(m, Feed) for m in channel.received):
            await asyncio.sleep(0.01)
        result = Result(step_id=step, session_id="s1", compute_s=0.001, y=torch.ones(1, 96))
        channel.pair.v.send(result)
        channel.pair.c.receive(channel.pair.v.data_to_send()[0])
        (arrived,) = channel.pair.c.events()
        await link._dispatch(arrived)

    started = time.monotonic()
    answering = asyncio.create_task(volunteer_answers_when_fed())
    got = await link.wait_step(step, refeed=torch.full((1, 96), 2.0))
    await answering
    fed = [m for m in channel.received if isinstance(m, Feed)]
    assert len(fed) == 1 and fed[0].step_id == step and torch.equal(fed[0].x, torch.full((1, 96), 2.0))
    assert 0.25 <= time.monotonic() - started < 0.6  # fed at half the stall time, answered before the whole
    assert torch.equal(got.y, torch.ones(1, 96)) and channel.closed_with is None


async def test_a_volunteer_silent_after_the_relayed_input_stalls_in_the_usual_time() -> None:
    import asyncio
    import time

    import torch

    from core.errors import StageFailed
    from core.protocol.messages import Feed

    link, channel = _direct_link(0.6)
    step = link.open_step(assignment_id="a1", tokens=1)
    await link.send_step(step, session_id="s1", assignment_id="a1", start_pos=5, x=None, from_node="bf1upstream")
    started = time.monotonic()
    with pytest.raises(StageFailed, match="stalled"):
        await link.wait_step(step, refeed=torch.ones(1, 96))
    assert 0.5 <= time.monotonic() - started < 0.9  # the stall time once, not twice
    await asyncio.sleep(0)  # the link closes itself in the background
    assert [type(m) for m in channel.received].count(Feed) == 1 and channel.closed_with == 4002
    assert step not in link._pending
