"""Secrets are created whole, 0600, and never replace an existing file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from core.private_file import create_private_file


def test_a_private_file_is_owner_only_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "secret"
    create_private_file(path, b"key material\n")
    assert path.read_bytes() == b"key material\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary left behind


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    create_private_file(path, b"first")
    with pytest.raises(FileExistsError):
        create_private_file(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
