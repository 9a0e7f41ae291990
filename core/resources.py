"""Where the files in ``assets/`` (icons, the cluster-map page) are, from source or frozen.

Run from a checkout or an editable install they sit beside the packages; in a frozen
bundle (PyInstaller) they are unpacked under ``sys._MEIPASS``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def assets_root() -> Path:
    """The ``assets`` folder of this install (a checkout's, or the frozen bundle's)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        return Path(bundle) / "assets"
    return Path(__file__).resolve().parents[1] / "assets"


def asset_path(*parts: str) -> Path:
    """The path of ``assets/<parts…>``; it is not checked for existence."""
    return assets_root().joinpath(*parts)
