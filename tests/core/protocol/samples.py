"""One valid instance of every protocol message, for round-trip and fuzz tests."""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from core.protocol.frames import PROTOCOL_VERSION
from core.protocol.messages import (
    Accepted,
    Assign,
    Auth,
    Bye,
    Challenge,
    Drain,
    EndSession,
    Error,
    Feed,
    FetchTensor,
    Forward,
    Handoff,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LoadProgress,
    Message,
    PeerAuth,
    PeerChallenge,
    Ready,
    Result,
    SetSlowdown,
    ModelInfo,
    ProfileUpdate,
    LinkProbe,
    LinkProbeAck,
    TensorChunk,
    TensorSpec,
    Unassign,
)
from core.types import HardwareProfile, LayerRange, NodeId

NODE_KEY = bytes(range(32))
SHA = hashlib.sha256(b"weights").hexdigest()
PROFILE = HardwareProfile(
    node_id=NodeId("bf1abc"),
    device="cpu",
    memory_bytes=8 * 2**30,
    seconds_per_layer=0.0125,
    prefill_seconds_per_layer=0.25,
    prefill_tokens=128,
    threads=2,
    rtt_s=0.003,
    name="laptop ünïcode",
    os="Linux",
)


def randn(*shape: int) -> torch.Tensor:
    """Normal noise that is the same in every run, whatever ran before (fuzz runs stay reproducible)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def hello(**changes: object) -> Hello:
    msg = Hello(
        protocol_version=PROTOCOL_VERSION,
        node_public_key=NODE_KEY,
        name="laptop",
        os="Linux",
        app_version="0.1.0",
        profile=PROFILE,
        invite="bfinv1.abc.def",
        client_nonce=b"\x01" * 32,
    )
    return dataclasses.replace(msg, **changes)


def assign(assignment_id: str = "a1", **changes: object) -> Assign:
    msg = Assign(
        assignment_id=assignment_id,
        model_id="smollm2-135m",
        model_name="SmolLM2-135M-Instruct",
        hf_config={"hidden_size": 576, "rope_scaling": None, "nested": {"list": [1, 2.5, "x"]}},
        layers=LayerRange(0, 10, 30),
        dtype="float32",
        tensors=(
            TensorSpec("blk.0.attn_q.weight", "Q4_1", (576, 576), 186624, SHA),
            TensorSpec("token_embd.weight", "F32", (49152, 576), 113246208, SHA),
        ),
        max_tokens=2048,
        signature=b"\x07" * 64,
    )
    return dataclasses.replace(msg, **changes)


def forward(step_id: int = 1, assignment_id: str = "a1", session_id: str = "s1") -> Forward:
    return Forward(step_id=step_id, session_id=session_id, assignment_id=assignment_id, start_pos=0,
                   x=randn(1, 3, 576))


def result(step_id: int = 1, session_id: str = "s1") -> Result:
    return Result(step_id=step_id, session_id=session_id, compute_s=0.01, y=randn(1, 3, 576).bfloat16())


def every_message() -> list[Message]:
    """One instance of each message kind (the test suite checks none is missing)."""
    return [
        hello(),
        hello(invite=None, profile=dataclasses.replace(PROFILE, bandwidth_bytes_per_s=1.5e8)),
        Challenge(pool_public_key=b"\x02" * 32, pool_name="home pool", nonce=b"\x03" * 32,
                  pool_signature=b"\x04" * 64),
        Auth(signature=b"\x05" * 64),
        Accepted(node_id=NodeId("bf1abc"), heartbeat_interval_s=5.0),
        assign(),
        Unassign(assignment_id="a1"),
        FetchTensor(assignment_id="a1", name="blk.0.attn_q.weight", offset=0, length=4096),
        TensorChunk(assignment_id="a1", name="blk.0.attn_q.weight", offset=4096, total=186624,
                    data=torch.arange(256, dtype=torch.uint8)),
        LoadProgress(assignment_id="a1", done_bytes=10, total_bytes=20),
        Ready(assignment_id="a1", load_seconds=1.5),
        forward(),
        Forward(step_id=2, session_id="s1", assignment_id="a1", start_pos=3, x=torch.tensor([[1, 2, 3]])),
        result(),
        Forward(step_id=3, session_id="s1", assignment_id="a1", start_pos=4, x=torch.empty(0), from_node="bf1up",
                next_node="bf1down", next_step=9, logits_top=64),
        Result(step_id=3, session_id="s1", compute_s=0.02, y=randn(1, 64), handed_off=True,
               indices=torch.arange(64, dtype=torch.int32).reshape(1, 64)),
        Feed(step_id=3, x=randn(1, 576)),
        PeerChallenge(node_public_key=b"\x08" * 32, nonce=b"\x09" * 32),
        PeerAuth(node_public_key=b"\x0a" * 32, signature=b"\x0b" * 64),
        Handoff(step_id=9, session_id="s1", start_pos=4, x=randn(1, 576).half(), codec="float16"),
        EndSession(session_id="s1"),
        Heartbeat(seq=7, sent_at=12345.678),
        HeartbeatAck(seq=7, sent_at=-1.0),
        SetSlowdown(factor=2.5),
        ModelInfo(model_id="smollm2-abc", model_name="SmolLM2", hf_config={"model_type": "llama"}, dtype="float32"),
        ProfileUpdate(profile=PROFILE),
        LinkProbe(seq=1, sent_at=1.5, payload=torch.zeros(1024, dtype=torch.uint8)),
        LinkProbeAck(seq=1, sent_at=1.5, received_bytes=1024),
        Drain(reason="user paused"),
        Error(code="ShardLoadFailed", message="hash mismatch", hint="retry", step_id=None),
        Error(code="StageFailed", message="cache shorter than start_pos", step_id=4),
        Bye(reason="shutting down"),
    ]


def same(a: Message, b: Message) -> bool:
    """Field-wise equality, comparing tensors exactly (dtype, shape and bits)."""
    if type(a) is not type(b):
        return False
    for field in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape
                    and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))):
                return False
        elif x != y:
            return False
    return True
