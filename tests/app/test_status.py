"""The status snapshot's words: sizes, durations, the map address and the diagnostics report."""

from __future__ import annotations

from app.status import (
    Activity,
    AgentStatus,
    Hosting,
    HostingPhase,
    LayerSpan,
    MachineSummary,
    PoolRef,
    diagnostics_text,
    format_bytes,
    format_duration,
)


def test_format_bytes_and_duration() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536 << 20) == "1.5 GiB"
    assert format_bytes(514 << 20) == "514 MiB"
    assert format_duration(75) == "1 min 15 s"
    assert format_duration(3725) == "1 h 02 min"
    assert format_duration(-3) == "0 s"


def test_layer_spans_read_one_based() -> None:
    assert str(LayerSpan(0, 6, 6)) == "1–6 of 6"
    assert str(LayerSpan(4, 5, 30)) == "5 of 30"


def test_pool_ref_map_url() -> None:
    assert PoolRef("bf1", "p", "ws://10.0.0.2:8765/ws").http_url == "http://10.0.0.2:8765/"
    assert PoolRef("bf1", "p", "wss://pool.example/ws").http_url == "https://pool.example/"


def test_diagnostics_name_everything_but_the_invite() -> None:
    status = AgentStatus(
        activity=Activity.SERVING,
        detail="Serving layers 1–6 of 6",
        pool=PoolRef("bf1abc", "Lab", "ws://10.0.0.2:8765/ws", "tiny"),
        layers=(LayerSpan(0, 6, 6),),
        steps_served=42,
        hosting=Hosting(HostingPhase.RUNNING, "Mine", "default", url="http://127.0.0.1:8765", invite="bfinv1.SECRET.SIG"),
        machine=MachineSummary("Ryzen", 4, 8, 16 << 30, "cpu", "Linux 6.1", seconds_per_layer=0.0012, threads=8),
        log=("12:00:00 connected",),
    )
    text = diagnostics_text(status, app_version="0.1.0", platform="Linux")
    for expected in ("serving", "bf1abc", "1–6 of 6", "42", "Ryzen", "16.0 GiB", "1.20 ms/layer", "12:00:00 connected", "Mine"):
        assert expected in text
    assert "SECRET" not in text
