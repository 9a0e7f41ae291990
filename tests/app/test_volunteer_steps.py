"""The volunteer's compute-thread step logic: batched steps equal solo steps, errors stay per step, codecs apply."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from app.volunteer import Volunteer, VolunteerConfig, _Answer, _LoadedShard
from core.errors import ProtocolViolation, ShardLoadFailed
from core.model.shard import Shard
from core.model.weights import shard_tensor_names
from core.protocol.codec import decode, encode
from core.protocol.messages import Forward
from core.types import HardwareProfile, LayerRange, NodeId

PROMPT = 5


@pytest.fixture(scope="module")
def shards(tiny_model) -> dict[str, Shard]:  # noqa: ANN001
    config = tiny_model.config
    out = {}
    for name, layers in {"mid": LayerRange(2, 4, 6), "last": LayerRange(4, 6, 6)}.items():
        out[name] = Shard(config, layers, {n: tiny_model.tensor(n) for n in shard_tensor_names(config, layers)})
    return out


@pytest.fixture
def volunteer(tmp_path: Path, shards: dict[str, Shard]) -> Volunteer:
    config = VolunteerConfig(data_dir=tmp_path, url="ws://127.0.0.1:9/ws", insecure_loopback=True,
                             profile=HardwareProfile(node_id=NodeId("test")))
    v = Volunteer(config)
    for name, shard in shards.items():
        v.shards[name] = _LoadedShard(name, shard, max_tokens=256)
    return v


def hidden(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 96, generator=torch.Generator().manual_seed(seed))


def forward(session: str, start: int, x: torch.Tensor, *, assignment: str = "mid", step: int = 1,
            codec: str = "model", logits_codec: str = "model") -> Forward:
    enc = encode(x, codec)
    return Forward(step_id=step, session_id=session, assignment_id=assignment, start_pos=start, x=enc.data,
                   codec=enc.codec, scales=enc.scales, logits_codec=logits_codec)


def prefill(v: Volunteer, sessions: list[str], assignment: str = "mid") -> None:
    for i, s in enumerate(sessions):
        outcomes, together, _ = v._run([forward(s, 0, hidden(PROMPT, i), assignment=assignment)])
        assert together == 1 and not isinstance(outcomes[0], Exception)


def test_a_batch_of_decode_steps_equals_each_step_alone(volunteer: Volunteer, tmp_path: Path, shards) -> None:  # noqa: ANN001
    sessions = ["a", "b", "c"]
    prefill(volunteer, sessions)
    steps = [forward(s, PROMPT, hidden(1, 10 + i), step=i) for i, s in enumerate(sessions)]
    outcomes, together, seconds = volunteer._run(steps)
    assert together == 3 and seconds > 0

    solo = Volunteer(VolunteerConfig(data_dir=tmp_path / "solo", url="ws://127.0.0.1:9/ws", insecure_loopback=True,
                                     profile=HardwareProfile(node_id=NodeId("solo"))))
    solo.shards["mid"] = _LoadedShard("mid", shards["mid"], max_tokens=256)
    prefill(solo, sessions)
    for step, outcome in zip(steps, outcomes, strict=True):
        (alone,), one, _ = solo._run([step])
        assert one == 1 and isinstance(outcome, _Answer) and isinstance(alone, _Answer)
        torch.testing.assert_close(decode(outcome.out), decode(alone.out), rtol=1e-5, atol=1e-5)
    assert all(c.length == PROMPT + 1 for c in volunteer.shards["mid"].caches.values())


def test_a_step_that_cannot_start_fails_alone(volunteer: Volunteer) -> None:
    prefill(volunteer, ["a", "b", "c"])
    steps = [forward("a", PROMPT, hidden(1, 1)), forward("b", PROMPT + 3, hidden(1, 2)), forward("c", PROMPT, hidden(1, 3))]
    outcomes, together, _ = volunteer._run(steps)
    assert together == 2
    assert isinstance(outcomes[1], ProtocolViolation) and "only 5 tokens are cached" in outcomes[1].message
    assert isinstance(outcomes[0], _Answer) and isinstance(outcomes[2], _Answer)
    caches = volunteer.shards["mid"].caches
    assert (caches["a"].length, caches["b"].length, caches["c"].length) == (PROMPT + 1, PROMPT, PROMPT + 1)


def test_non_finite_output_is_refused_and_forgotten(volunteer: Volunteer, tiny_model) -> None:  # noqa: ANN001
    """A shard whose MLP overflows for ordinary inputs; a near-zero input stays finite through it."""
    config, layers = tiny_model.config, LayerRange(2, 4, 6)
    tensors = {n: tiny_model.tensor(n) * (1e20 if "gate_proj" in n or "up_proj" in n else 1.0)
               for n in shard_tensor_names(config, layers)}
    volunteer.shards["bad"] = _LoadedShard("bad", Shard(config, layers, tensors), max_tokens=256)
    steps = [forward("a", 0, torch.full((1, 96), 1e-30), assignment="bad"), forward("b", 0, hidden(1, 1), assignment="bad")]
    outcomes, together, _ = volunteer._run(steps)
    assert together == 2
    assert isinstance(outcomes[0], _Answer) and bool(torch.isfinite(outcomes[0].out.data).all())
    assert isinstance(outcomes[1], ShardLoadFailed) and "non-finite" in outcomes[1].message
    caches = volunteer.shards["bad"].caches
    assert (caches["a"].length, caches["b"].length) == (1, 0)


def test_answers_travel_in_the_step_codec_and_logits_in_theirs(volunteer: Volunteer) -> None:
    prefill(volunteer, ["a"])
    prefill(volunteer, ["a"], assignment="last")
    (mid,), _, _ = volunteer._run([forward("a", PROMPT, hidden(1, 7), codec="int8")])
    assert isinstance(mid, _Answer) and mid.out.codec == "int8" and mid.out.scales is not None
    (last,), _, _ = volunteer._run([forward("a", PROMPT, hidden(1, 7), assignment="last", codec="int8",
                                            logits_codec="float16")])
    assert isinstance(last, _Answer) and last.out.codec == "float16" and last.out.data.shape == (1, 320)
    assert last.indices is None


def test_a_last_stage_asked_for_its_top_logits_sends_those_and_their_ids(volunteer: Volunteer) -> None:
    prefill(volunteer, ["a"], assignment="last")
    x = hidden(1, 7)
    (full,), _, _ = volunteer._run([forward("a", PROMPT, x, assignment="last")])
    (top,), _, _ = volunteer._run([dataclasses.replace(forward("a", PROMPT, x, assignment="last"), logits_top=8)])
    assert isinstance(full, _Answer) and isinstance(top, _Answer) and top.indices is not None
    assert top.out.data.shape == top.indices.shape == (1, 8) and top.indices.dtype == torch.int32
    expected = decode(full.out).topk(8)
    torch.testing.assert_close(decode(top.out), expected.values)
    assert torch.equal(top.indices.long(), expected.indices)


@pytest.mark.parametrize(
    ("x", "start", "message"),
    [
        (torch.full((2, 96), float("nan")), 0, "nan or infinite"),
        (torch.randn(2, 95), 0, "hidden"),
        (torch.randn(2, 96), 255, "context"),
    ],
)
def test_a_step_out_of_bounds_is_refused_before_it_touches_the_cache(volunteer: Volunteer, x: torch.Tensor, start: int, message: str) -> None:
    prefill(volunteer, ["s"])
    outcomes, _, _ = volunteer._run([forward("s", start if start else PROMPT, x)])
    assert isinstance(outcomes[0], ProtocolViolation) and message in str(outcomes[0]).lower()
    assert volunteer.shards["mid"].caches["s"].length == PROMPT  # the session's cache is as it was


def test_an_assignment_larger_than_the_memory_cap_is_refused_before_fetching(tmp_path: Path) -> None:
    from tests.core.protocol.samples import assign

    config = VolunteerConfig(data_dir=tmp_path, url="ws://127.0.0.1:9/ws", insecure_loopback=True,
                             profile=HardwareProfile(node_id=NodeId("small")), memory_cap_bytes=64 * 2**20)
    with pytest.raises(ShardLoadFailed, match="needs 0.1[0-9] GiB .* offers 0.06 GiB"):
        Volunteer(config)._check_memory(assign(), torch.float32)
    roomy = VolunteerConfig(data_dir=tmp_path, url="ws://127.0.0.1:9/ws", insecure_loopback=True,
                            profile=HardwareProfile(node_id=NodeId("big")), memory_cap_bytes=2**30)
    Volunteer(roomy)._check_memory(assign(), torch.float32)
