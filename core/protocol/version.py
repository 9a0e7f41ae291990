"""The wire protocol's version as a bare number, importable without numpy or torch.

The desktop tray compares it with the version a pool advertises on the network before
anything heavy is loaded. It must equal :data:`core.protocol.frames.PROTOCOL_VERSION`
(a test checks they agree).
"""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 3
"""3: direct links between volunteers (hand-offs, feeds) and top-logits answers.
2: signed assignments, activation codecs and batched results; TLS bound to the pool key."""
