"""The probe: sane facts about this machine, and a CPU fallback whatever sub-probe fails."""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pytest
import torch

from app.hardware import probe as probe_module
from app.hardware.probe import (
    CudaDevice,
    MachineInfo,
    cpu_model,
    hardware_fingerprint,
    os_display_name,
    parse_proc_cpuinfo,
    probe,
    probe_accelerator,
    usable_devices,
)
from tests.app.hardware.samples import GIB, gpu_machine, machine


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("sub-probe failed")


def test_probe_describes_this_machine() -> None:
    info = probe()
    assert info.cpu_model and info.cpu_model != "unknown"
    assert info.logical_cores >= 1 and 1 <= info.physical_cores <= info.logical_cores
    assert info.total_memory_bytes > 0 and 0 < info.available_memory_bytes <= info.total_memory_bytes
    assert info.os_name == os_display_name(platform.system())
    assert info.torch_version == torch.__version__
    assert info.accelerator == probe_accelerator()
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert info.accelerator == expected
    assert usable_devices(info)[0] == "cpu"


def test_probe_survives_every_sub_probe_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", _boom)
    monkeypatch.setattr(psutil, "cpu_count", _boom)
    monkeypatch.setattr(torch.cuda, "is_available", _boom)
    monkeypatch.setattr(torch.backends.mps, "is_available", _boom)
    monkeypatch.setattr(platform, "processor", _boom)
    monkeypatch.setattr(platform, "machine", _boom)
    monkeypatch.setattr(platform, "release", _boom)
    monkeypatch.setattr(platform, "freedesktop_os_release", _boom)
    monkeypatch.setitem(probe_module._CPU_MODEL_READERS, platform.system(), _boom)

    info = probe()
    assert info.accelerator == "cpu" and probe_accelerator() == "cpu"
    assert info.cpu_model == "unknown" and info.arch == "unknown" and info.os_version == ""
    assert info.logical_cores >= 1 and info.physical_cores == info.logical_cores
    assert info.total_memory_bytes == 0 and info.available_memory_bytes == 0
    assert usable_devices(info) == ("cpu",)
    assert len(hardware_fingerprint(info)) == 64


def test_probe_survives_a_broken_cuda_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", _boom)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert probe().cuda_devices == ()
    assert probe_accelerator() == "cpu"


def test_probe_reports_cuda_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    props = SimpleNamespace(name="Test GPU", total_memory=24 * GIB, major=8, minor=6)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    info = probe()
    assert info.cuda_devices == (CudaDevice(0, "Test GPU", 24 * GIB, (8, 6)), CudaDevice(1, "Test GPU", 24 * GIB, (8, 6)))
    assert info.accelerator == "cuda" and probe_accelerator() == "cuda"
    assert usable_devices(info) == ("cpu", "cuda:0", "cuda:1")


def test_probe_reports_apple_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    info = probe()
    assert info.mps_available and info.accelerator == "mps" and probe_accelerator() == "mps"
    assert usable_devices(info) == ("cpu", "mps")


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz
flags\t\t: fpu vme

processor\t: 1
model name\t: Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
CPU implementer\t: 0x41

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
RISCV_CPUINFO = """processor\t: 0
hart\t\t: 0
isa\t\t: rv64imafdc
uarch\t\t: sifive,u74-mc
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (X86_CPUINFO, "Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz"),
        (ARM_CPUINFO, "BCM2835"),
        (RISCV_CPUINFO, "sifive,u74-mc"),
        ("processor\t: 0\nprocessor\t: 1\n", None),
        ("", None),
        ("garbage without colons\n\x00\x01", None),
    ],
)
def test_parse_proc_cpuinfo(text: str, expected: str | None) -> None:
    assert parse_proc_cpuinfo(text) == expected


def test_cpu_model_on_macos_asks_sysctl_with_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(cmd=cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, 0, stdout="Apple M2 Pro\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert cpu_model("Darwin") == "Apple M2 Pro"
    assert seen["cmd"] == ["sysctl", "-n", "machdep.cpu.brand_string"]
    assert seen["timeout"] == probe_module.SUBPROCESS_TIMEOUT_S


def test_cpu_model_falls_back_when_sysctl_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(cmd: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd, 2.0)

    monkeypatch.setattr(subprocess, "run", hang)
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_model("Darwin") == "arm"


@pytest.mark.skipif(sys.platform == "win32", reason="checks the fallback where the registry is absent")
def test_cpu_model_on_windows_falls_back_without_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "processor", lambda: "Intel64 Family 6 Model 165 Stepping 5, GenuineIntel")
    assert cpu_model("Windows") == "Intel64 Family 6 Model 165 Stepping 5, GenuineIntel"


def test_cpu_model_of_an_unknown_os_uses_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert cpu_model("Haiku") == "riscv64"
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert cpu_model("Haiku") == "unknown"


def test_os_display_names() -> None:
    assert [os_display_name(s) for s in ("Darwin", "Windows", "Linux", "")] == ["macOS", "Windows", "Linux", "unknown"]


def test_fingerprint_is_stable_and_ignores_what_drifts() -> None:
    info = machine()
    fp = hardware_fingerprint(info)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert hardware_fingerprint(probe()) == hardware_fingerprint(probe())
    drifted = dataclasses.replace(info, available_memory_bytes=1, os_version="6.9", torch_version="9.9",
                                  total_memory_bytes=info.total_memory_bytes - (100 << 20))
    assert hardware_fingerprint(drifted) == fp


@pytest.mark.parametrize(
    "change",
    [
        {"cpu_model": "Other CPU"},
        {"physical_cores": 8},
        {"logical_cores": 16},
        {"total_memory_bytes": 32 * GIB},
        {"arch": "arm64"},
        {"cuda_devices": gpu_machine().cuda_devices},
        {"mps_available": True},
    ],
)
def test_fingerprint_changes_with_the_hardware(change: dict[str, object]) -> None:
    assert hardware_fingerprint(dataclasses.replace(machine(), **change)) != hardware_fingerprint(machine())


@pytest.mark.parametrize("info", [machine(), gpu_machine(), probe()])
def test_machine_info_round_trips_through_json(info: MachineInfo) -> None:
    assert MachineInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_machine_info_from_a_bad_dict_raises_value_error() -> None:
    data = machine().to_dict()
    del data["cpu_model"]
    with pytest.raises(ValueError):
        MachineInfo.from_dict(data)
    with pytest.raises(ValueError):
        MachineInfo.from_dict({**machine().to_dict(), "cuda_devices": [{"index": 0}]})
