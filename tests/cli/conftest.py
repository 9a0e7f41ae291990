"""Run ``butterfly`` in this process, as tests of the command line's output need."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cli.main import main


@dataclass(frozen=True, slots=True)
class Ran:
    """What one run of the command did."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """``run_cli(*args)`` runs ``butterfly ARGS`` in this process (from any thread) and returns its exit code and output.

    ``$BUTTERFLY_ADMIN_KEY`` is cleared so the environment of the test run cannot leak in.
    """
    monkeypatch.delenv("BUTTERFLY_ADMIN_KEY", raising=False)
    lock = threading.Lock()

    def run(*args: str) -> Ran:
        with lock:
            capsys.readouterr()
            code = main(list(args))
            out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run
