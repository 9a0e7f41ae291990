"""The torch-free copy of the protocol version is the one the frames carry."""

from __future__ import annotations

from core.protocol import frames, version


def test_version_matches_the_frames() -> None:
    assert version.PROTOCOL_VERSION == frames.PROTOCOL_VERSION
