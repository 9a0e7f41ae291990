"""The coordinator's choice of activation codec per link."""

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
