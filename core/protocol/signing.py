"""Assignments signed by the pool key.

An :class:`~core.protocol.messages.Assign` tells a volunteer which layers to serve and
the sha256 of every tensor it will fetch. The pool signs it, so a volunteer runs only
weights the pool vouched for: a relay or a rewritten message cannot swap the layers,
the dtype or a tensor hash (and each fetched tensor is then checked against its hash).
The signature covers a canonical JSON rendering of every field but the signature itself,
prefixed with a domain tag and the pool id so it cannot be replayed as anything else.
"""

from __future__ import annotations

import json
from dataclasses import replace

from core.errors import AuthFailed
from core.identity import Identity, fingerprint, verify_signature
from core.protocol.messages import Assign

_DOMAIN = b"butterfly-assign-v1\n"
UNSIGNED = bytes(64)
"""The placeholder signature of an assignment that is about to be signed."""


def assignment_transcript(pool_id: str, assign: Assign) -> bytes:
    """The bytes the pool signs for ``assign`` (its signature field excluded)."""
    body = {
        "pool": pool_id,
        "assignment_id": assign.assignment_id,
        "model_id": assign.model_id,
        "model_name": assign.model_name,
        "hf_config": assign.hf_config,
        "layers": [assign.layers.start, assign.layers.end, assign.layers.total],
        "dtype": assign.dtype,
        "tensors": [[t.name, t.dtype, list(t.shape), t.nbytes, t.sha256] for t in assign.tensors],
        "max_tokens": assign.max_tokens,
    }
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_assignment(pool: Identity, assign: Assign) -> Assign:
    """``assign`` carrying the pool's signature over it."""
    return replace(assign, signature=pool.sign(assignment_transcript(pool.fingerprint, assign)))


def verify_assignment(pool_public_key: bytes, assign: Assign) -> None:
    """Raise :class:`AuthFailed` unless the pool with ``pool_public_key`` signed ``assign`` as it is."""
    transcript = assignment_transcript(fingerprint(pool_public_key), assign)
    if not verify_signature(pool_public_key, assign.signature, transcript):
        raise AuthFailed(
            f"assignment {assign.assignment_id} for layers {assign.layers} is not signed by the pool",
            hint="the assignment was altered on the way; the volunteer refuses it and serves nothing from it",
        )


__all__ = ["UNSIGNED", "assignment_transcript", "sign_assignment", "verify_assignment"]
