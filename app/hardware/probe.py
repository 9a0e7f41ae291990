"""Facts about this machine: OS, CPU, cores, RAM and accelerators; never raises.

Every sub-probe is guarded: one that fails (a missing ``/proc``, a ``sysctl`` that hangs, a
broken CUDA driver) logs once at debug level and yields its fallback, so :func:`probe` always
returns a :class:`MachineInfo` and :func:`probe_accelerator` always names a device, ``"cpu"``
at worst. Platform-specific reads sit behind one function per platform; the parsing is pure.
torch is imported only inside the accelerator sub-probes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

SUBPROCESS_TIMEOUT_S = 2.0
"""Longest wait for a platform tool such as ``sysctl``."""

_GIB = 1 << 30
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CudaDevice:
    """One CUDA (or ROCm) device as torch sees it."""

    index: int
    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int]


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """What :func:`probe` found. Unknown numbers are 0, unknown names ``"unknown"``.

    ``os_name`` is ``"Linux"``, ``"macOS"`` or ``"Windows"`` (else what the platform says);
    ``mps_available`` means Apple's Metal backend works, whose memory is the unified RAM.
    """

    os_name: str
    os_version: str
    arch: str
    cpu_model: str
    physical_cores: int
    logical_cores: int
    total_memory_bytes: int
    available_memory_bytes: int
    cuda_devices: tuple[CudaDevice, ...] = ()
    mps_available: bool = False
    torch_version: str = ""

    @property
    def accelerator(self) -> str:
        """The best device kind: ``"cuda"``, then ``"mps"``, else ``"cpu"``."""
        if self.cuda_devices:
            return "cuda"
        return "mps" if self.mps_available else "cpu"

    @property
    def os_label(self) -> str:
        """A one-line OS description, e.g. ``"Linux 6.1.0 (Debian GNU/Linux 12)"``."""
        return f"{self.os_name} {self.os_version}".strip()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back to an equal value."""
        data = asdict(self)
        data["cuda_devices"] = [
            {**asdict(d), "compute_capability": list(d.compute_capability)} for d in self.cuda_devices
        ]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MachineInfo:
        """The value :meth:`to_dict` wrote; ``ValueError`` if a field is missing or mistyped."""
        try:
            devices = tuple(
                CudaDevice(
                    index=int(d["index"]),
                    name=str(d["name"]),
                    total_memory_bytes=int(d["total_memory_bytes"]),
                    compute_capability=(int(d["compute_capability"][0]), int(d["compute_capability"][1])),
                )
                for d in data["cuda_devices"]
            )
            return cls(
                os_name=str(data["os_name"]),
                os_version=str(data["os_version"]),
                arch=str(data["arch"]),
                cpu_model=str(data["cpu_model"]),
                physical_cores=int(data["physical_cores"]),
                logical_cores=int(data["logical_cores"]),
                total_memory_bytes=int(data["total_memory_bytes"]),
                available_memory_bytes=int(data["available_memory_bytes"]),
                cuda_devices=devices,
                mps_available=bool(data["mps_available"]),
                torch_version=str(data["torch_version"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not a machine description: {exc!r}") from exc


def probe() -> MachineInfo:
    """Describe this machine. Never raises; each failed sub-probe yields its fallback."""
    system = _guarded(platform.system, "", "OS name")
    logical = _guarded(_logical_cores, os.cpu_count() or 1, "logical cores")
    total, available = _guarded(_memory, (0, 0), "memory")
    cuda = _guarded(_cuda_devices, (), "CUDA devices")
    return MachineInfo(
        os_name=os_display_name(system),
        os_version=_guarded(lambda: os_version(system), "", "OS version"),
        arch=_guarded(platform.machine, "", "architecture") or "unknown",
        cpu_model=_guarded(lambda: cpu_model(system), "unknown", "CPU model") or "unknown",
        physical_cores=_guarded(lambda: _physical_cores(logical), logical, "physical cores"),
        logical_cores=logical,
        total_memory_bytes=total,
        available_memory_bytes=available,
        cuda_devices=cuda,
        mps_available=False if cuda else _guarded(_mps_available, False, "MPS"),
        torch_version=_guarded(_torch_version, "", "torch version"),
    )


def probe_accelerator() -> str:
    """``"cuda"`` if a CUDA device works, else ``"mps"`` if Apple Metal does, else ``"cpu"``. Never raises."""
    if _guarded(_cuda_devices, (), "CUDA devices"):
        return "cuda"
    return "mps" if _guarded(_mps_available, False, "MPS") else "cpu"


def usable_devices(info: MachineInfo) -> tuple[str, ...]:
    """Torch device strings worth benchmarking: ``"cpu"`` always, then each CUDA device or ``"mps"``."""
    devices = ["cpu"]
    devices += [f"cuda:{d.index}" for d in info.cuda_devices]
    if info.mps_available:
        devices.append("mps")
    return tuple(devices)


def hardware_fingerprint(info: MachineInfo) -> str:
    """sha256 hex of the parts that identify the hardware and do not drift.

    CPU model, core counts, architecture, OS name, total RAM rounded to GiB and GPU names;
    available memory, OS version and torch version are left out.
    """
    stable = {
        "os": info.os_name,
        "arch": info.arch,
        "cpu": info.cpu_model,
        "physical_cores": info.physical_cores,
        "logical_cores": info.logical_cores,
        "ram_gib": round(info.total_memory_bytes / _GIB),
        "gpus": sorted(d.name for d in info.cuda_devices),
        "mps": info.mps_available,
    }
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- OS and CPU


def os_display_name(system: str) -> str:
    """The product's name for ``platform.system()``'s answer (``"Darwin"`` -> ``"macOS"``)."""
    return {"Darwin": "macOS", "": "unknown"}.get(system, system)


def os_version(system: str) -> str:
    """The running OS's version, e.g. ``"6.1.0 (Debian GNU/Linux 12)"``, ``"14.4"``, ``"10.0.22631"``."""
    if system == "Darwin":
        return platform.mac_ver()[0] or platform.release()
    if system == "Windows":
        return platform.version() or platform.release()
    release = platform.release()
    if system == "Linux":
        distro = _guarded(lambda: platform.freedesktop_os_release().get("PRETTY_NAME", ""), "", "distribution")
        return f"{release} ({distro})" if distro else release
    return release


def cpu_model(system: str) -> str:
    """The CPU's marketing name, read the way ``system`` (a ``platform.system()`` value) allows.

    Falls back to ``platform.processor()`` and then the architecture; ``"unknown"`` at worst.
    """
    reader = _CPU_MODEL_READERS.get(system)
    if reader is not None:
        name = _guarded(reader, None, f"CPU model on {system}")
        if name:
            return name
    fallback = _guarded(platform.processor, "", "platform.processor") or _guarded(platform.machine, "", "arch")
    return fallback.strip() or "unknown"


def parse_proc_cpuinfo(text: str) -> str | None:
    """The CPU name in Linux ``/proc/cpuinfo`` text (x86 ``model name``, ARM/RISC-V fallbacks), or None."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    for key in ("model name", "hardware", "cpu model", "uarch", "processor", "cpu"):
        value = fields.get(key)
        if value and not value.isdigit():  # x86 "processor : 0" is an index, not a name
            return value
    return None


def _cpu_model_linux() -> str | None:
    return parse_proc_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))


def _cpu_model_macos() -> str | None:
    out = subprocess.run(
        ["sysctl", "-n", "machdep.cpu.brand_string"],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=True,
    )
    return out.stdout.strip() or None


def _cpu_model_windows() -> str | None:
    import winreg  # Windows only; reached only when platform.system() == "Windows"

    key_path = r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
    with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key_path) as key:  # type: ignore[attr-defined]
        value, _ = winreg.QueryValueEx(key, "ProcessorNameString")  # type: ignore[attr-defined]
    return str(value).strip() or None


_CPU_MODEL_READERS: dict[str, Callable[[], str | None]] = {
    "Linux": _cpu_model_linux,
    "Darwin": _cpu_model_macos,
    "Windows": _cpu_model_windows,
}


# ---------------------------------------------------------------------------- cores and memory


def _logical_cores() -> int:
    import psutil

    return int(psutil.cpu_count(logical=True) or os.cpu_count() or 1)


def _physical_cores(logical: int) -> int:
    import psutil

    return int(psutil.cpu_count(logical=False) or logical)


def _memory() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


# ---------------------------------------------------------------------------- accelerators


def _cuda_devices() -> tuple[CudaDevice, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(CudaDevice(index, str(props.name), int(props.total_memory), (int(props.major), int(props.minor))))
    return tuple(devices)


def _mps_available() -> bool:
    import torch

    return bool(torch.backends.mps.is_available())


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _guarded(read: Callable[[], _T], fallback: _T, what: str) -> _T:
    """``read()``, or ``fallback`` (logged at debug level) if it raises anything."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a probe must never take the agent down
        log.debug("hardware probe: %s unavailable (%r); using %r", what, exc, fallback)
        return fallback
