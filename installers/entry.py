"""The entry point of the frozen ``butterfly`` executable (the script the PyInstaller spec freezes).

The frozen program is one executable with the subcommands of ``butterfly``. Parts of the
product start children as ``<python> -m <module> …`` (the compute process, the hosted
coordinator, the login item); frozen, ``sys.executable`` is this program, so ``-m`` is
honoured here for the product's own modules. Started with no arguments from a macOS
``.app`` or as the windowed Windows launcher ``butterfly-app``, it opens the desktop app.
"""

from __future__ import annotations

import multiprocessing
import re
import runpy
import sys
from dataclasses import dataclass

CLI_MODULE = "cli"
APP_LAUNCHER_STEM = "butterfly-app"
RUNNABLE_PACKAGES = ("app", "cli", "core", "server")


@dataclass(frozen=True, slots=True)
class Launch:
    """What to run: ``module`` as ``__main__`` with ``argv`` (the arguments after the program)."""

    module: str
    argv: tuple[str, ...]


def plan_launch(argv: list[str], *, executable: str) -> Launch:
    """Decide what the frozen program runs for the command line ``argv`` (without the program).

    ``-m <module> …`` runs one of the product's modules (anything else is left to the
    ``butterfly`` parser, which rejects it); macOS's ``-psn_…`` argument is dropped; no
    arguments in a ``.app`` bundle or the ``butterfly-app`` launcher means ``app``.
    """
    args = [a for a in argv if not a.startswith("-psn_")]
    if len(args) >= 2 and args[0] == "-m" and args[1].split(".")[0] in RUNNABLE_PACKAGES:
        module = args[1]
        if module in (CLI_MODULE, f"{CLI_MODULE}.__main__", f"{CLI_MODULE}.main"):
            return Launch(CLI_MODULE, tuple(args[2:]))
        return Launch(module, tuple(args[2:]))
    if not args:
        parts = ["", "", *re.split(r"[\\/]+", executable)]  # either separator, on every OS
        in_app_bundle = parts[-3:-1] == ["Contents", "MacOS"]
        if in_app_bundle or parts[-1].lower().removesuffix(".exe") == APP_LAUNCHER_STEM:
            return Launch(CLI_MODULE, ("app",))
    return Launch(CLI_MODULE, tuple(args))


def main() -> int:
    """Run the command line this process was started with; the exit code."""
    launch = plan_launch(sys.argv[1:], executable=sys.executable)
    if launch.module == CLI_MODULE:
        from cli.main import main as butterfly

        return butterfly(list(launch.argv))
    sys.argv = [sys.executable, *launch.argv]
    runpy.run_module(launch.module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
