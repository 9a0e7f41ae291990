"""Secrets on disk: written whole, readable by the owner only, never replacing a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` with mode 0600, or raise :class:`FileExistsError`.

    The bytes are written and synced under a temporary name (created 0600), then published
    under ``path`` without replacing an existing file, so a reader never sees half a
    secret and two processes racing to create it end up agreeing on one. Parent folders
    are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".private-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["create_private_file"]
