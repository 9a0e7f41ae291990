"""Assignments are signed by the pool key over every field; any change breaks the signature."""

from __future__ import annotations

import dataclasses

import pytest

from core.errors import AuthFailed
from core.identity import Identity
from core.protocol.messages import decode_message
from core.protocol.signing import sign_assignment, verify_assignment
from core.types import LayerRange
from tests.core.protocol.samples import assign

POOL = Identity.generate()


def test_a_signed_assignment_verifies_after_a_trip_over_the_wire() -> None:
    signed = sign_assignment(POOL, assign())
    received = decode_message(signed.to_frame())
    verify_assignment(POOL.public_key, received)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"assignment_id": "a2"},
        {"model_id": "other"},
        {"layers": LayerRange(0, 11, 30)},
        {"dtype": "bfloat16"},
        {"max_tokens": 4096},
        {"hf_config": {"hidden_size": 577}},
    ],
)
def test_changing_any_field_breaks_the_signature(change: dict[str, object]) -> None:
    signed = sign_assignment(POOL, assign())
    with pytest.raises(AuthFailed, match="not signed by the pool"):
        verify_assignment(POOL.public_key, dataclasses.replace(signed, **change))


def test_a_swapped_tensor_hash_or_another_key_is_refused() -> None:
    signed = sign_assignment(POOL, assign())
    swapped = dataclasses.replace(signed.tensors[0], sha256="f" * 64)
    with pytest.raises(AuthFailed):
        verify_assignment(POOL.public_key, dataclasses.replace(signed, tensors=(swapped, *signed.tensors[1:])))
    with pytest.raises(AuthFailed):
        verify_assignment(Identity.generate().public_key, signed)
    with pytest.raises(AuthFailed):
        verify_assignment(POOL.public_key, assign())
