"""Where the assets are found: beside the packages from source, under ``sys._MEIPASS`` frozen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.resources import asset_path, assets_root
from tests.conftest import ROOT


def test_from_source_the_assets_are_the_checkouts() -> None:
    assert assets_root() == ROOT / "assets"
    assert asset_path("butterfly.svg").is_file()
    assert asset_path("web", "index.html").is_file()


def test_frozen_the_assets_are_in_the_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert asset_path("web", "app.js") == tmp_path / "assets" / "web" / "app.js"


def test_a_stray_meipass_without_frozen_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(sys, "frozen", raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert assets_root() == ROOT / "assets"


def test_the_callers_use_it() -> None:
    from server.web import map as cluster_map

    assert cluster_map.WEB_ASSETS == asset_path("web")
    assert cluster_map.LOGO == asset_path("butterfly.svg")
