"""Fixtures of the hardware tests."""

from __future__ import annotations

import pytest

from tests.app.hardware.samples import CountingRunner


@pytest.fixture
def runner() -> CountingRunner:
    """A fresh benchmark runner that counts its calls."""
    return CountingRunner()
