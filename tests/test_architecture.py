"""The architecture is part of the product: import directions, no pickle, no POSIX-only calls."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "app", "server", "cli")
FORBIDDEN = {"core": {"app", "server", "cli"}, "app": {"server", "cli"}, "server": {"app", "cli"}}
POSIX_ONLY = {"fcntl", "uvloop", "termios", "pwd", "grp", "resource"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package]) for path in _sources(package)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {offenders}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_pickle_and_no_posix_only_modules(package: str) -> None:
    for path in _sources(package):
        text = path.read_text()
        imported = _imports(path)
        assert "pickle" not in imported and "dill" not in imported, f"{path} imports pickle"
        assert not imported & POSIX_ONLY, f"{path} imports POSIX-only {sorted(imported & POSIX_ONLY)}"
        for call in ("torch.load(", "os.fork(", "signal.SIGKILL", "signal.SIGSTOP"):
            if call == "torch.load(" and call in text:
                assert "weights_only=True" in text, f"{path} calls torch.load without weights_only=True"
            elif call != "torch.load(":
                assert call not in text, f"{path} uses POSIX-only {call}"


def test_no_circular_imports() -> None:
    """Every module imports on its own in a fresh interpreter (catches import cycles)."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in PACKAGES
        for path in _sources(package)
        if path.name != "__main__.py"
    ]
    script = (
        "import importlib, sys\n"
        "ours = ('core', 'app', 'server', 'cli')\n"
        "for m in sys.argv[1:]:\n"
        "    for name in [n for n in sys.modules if n.split('.')[0] in ours]:\n"
        "        del sys.modules[name]\n"
        "    importlib.import_module(m)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"importing our modules one by one failed:\n{result.stderr[-3000:]}"
