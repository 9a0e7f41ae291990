"""The reported HardwareProfile: measured times, and the smaller of the user's cap and the device's memory."""

from __future__ import annotations

import dataclasses

import pytest

from app.hardware.profile import build_profile, device_memory_bytes
from core.errors import ConfigError
from core.types import HardwareProfile, NodeId
from tests.app.hardware.samples import GIB, fake_bench, gpu_machine, machine, tiny_config


def test_cpu_profile_maps_every_field() -> None:
    bench = fake_bench(tiny_config(), threads=3)
    profile = build_profile(machine(), bench, memory_cap_bytes=4 * GIB, name="desk", node_id=NodeId("n1"))
    assert profile == HardwareProfile(
        node_id=NodeId("n1"), device="cpu", memory_bytes=4 * GIB, seconds_per_layer=0.002,
        prefill_seconds_per_layer=0.02, prefill_tokens=128, threads=3, name="desk",
        os="Linux 6.1.0 (Debian GNU/Linux 12)",
    )


def test_memory_is_capped_by_what_the_device_has() -> None:
    bench = fake_bench(tiny_config())
    assert build_profile(machine(), bench, memory_cap_bytes=64 * GIB, name="x").memory_bytes == 12 * GIB
    gpu = fake_bench(tiny_config(), device="cuda:0")
    profile = build_profile(gpu_machine(), gpu, memory_cap_bytes=500 * GIB, name="x")
    assert profile.memory_bytes == 80 * GIB and profile.device == "cuda"
    assert build_profile(gpu_machine(), gpu, memory_cap_bytes=10 * GIB, name="x").memory_bytes == 10 * GIB


def test_unknown_device_memory_trusts_the_cap() -> None:
    unknown = machine(total_memory_bytes=0, available_memory_bytes=0)
    assert build_profile(unknown, fake_bench(tiny_config()), memory_cap_bytes=3 * GIB, name="x").memory_bytes == 3 * GIB


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", 12 * GIB), ("mps", 12 * GIB), ("cuda", 80 * GIB), ("cuda:0", 80 * GIB), ("cuda:1", 0)],
)
def test_device_memory(device: str, expected: int) -> None:
    info = dataclasses.replace(gpu_machine(), mps_available=True)
    assert device_memory_bytes(info, device) == expected


def test_negative_cap_is_refused() -> None:
    with pytest.raises(ConfigError):
        build_profile(machine(), fake_bench(tiny_config()), memory_cap_bytes=-1, name="x")
