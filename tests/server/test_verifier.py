"""The coordinator's verifier and auditor on a real (tiny) model, against volunteer-side shards."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from app.volunteer import perturbed
from core.errors import RequestFailed
from core.model.shard import Shard
from core.model.weights import shard_tensor_names
from core.types import HardwareProfile, LayerRange, NodeId
from server.generation import SessionTrace
from server.validation import TrustPolicy, TrustState
from server.verifier import Auditor, Verifier, as_sent

RANGES = [(0, 2), (2, 4), (4, 6)]
PROMPT = [0, 17, 93, 5, 250, 42, 7]


def volunteer_shard(model, layers: LayerRange) -> Shard:  # noqa: ANN001 - StoredModel
    """A shard built the way a volunteer builds it: from the raw bytes the pool serves."""
    tensors = {}
    for name in shard_tensor_names(model.config, layers):
        entry = model.entry(name)
        raw = bytearray(model.tensor_bytes(name))
        tensors[name] = torch.frombuffer(raw, dtype=getattr(torch, entry.dtype)).reshape(entry.shape)
    return Shard(model.config, layers, tensors, dtype=torch.float32)


@dataclass
class Run:
    """A greedy session through volunteer-side shards, with every stage's inputs and outputs recorded."""

    trace: SessionTrace = field(default_factory=SessionTrace)
    inputs: dict[int, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)
    outputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)


def run_session(model, steps: int, *, codec: str = "model") -> Run:  # noqa: ANN001
    total = model.config.num_layers
    shards = [volunteer_shard(model, LayerRange(a, b, total)) for a, b in RANGES]
    caches = [s.new_cache() for s in shards]
    run = Run()
    x, pos = torch.tensor(PROMPT), 0
    for _ in range(steps):
        h = x
        for (a, _), shard, cache in zip(RANGES, shards, caches, strict=True):
            run.trace.record(a, pos, h)
            run.inputs.setdefault(a, []).append((pos, h))
            h = as_sent(shard(as_sent(h, codec), cache), codec)  # what arrives at the coordinator
            run.outputs.setdefault(a, []).append(h)
        pos += int(x.shape[0])
        x = torch.tensor([int(h.argmax())])
    return run


@dataclass
class FakeLink:
    """The parts of a VolunteerLink the auditor reads."""

    node_id: NodeId
    name: str = "v"
    profile: HardwareProfile = field(default_factory=lambda: HardwareProfile(NodeId("n")))
    codec: str = "model"
    logits_codec: str = "model"


@pytest.fixture
def verifier(tiny_model):  # noqa: ANN001, ANN201
    v = Verifier(tiny_model, dtype="float32", max_tokens=512)
    yield v
    v.close()


def layers(model, index: int) -> LayerRange:  # noqa: ANN001
    a, b = RANGES[index]
    return LayerRange(a, b, model.config.num_layers)


async def test_recomputed_stage_equals_the_volunteers_shard(tiny_model, verifier: Verifier) -> None:
    run = run_session(tiny_model, 1)
    for i, (a, _) in enumerate(RANGES):
        pos, x = run.inputs[a][0]
        y = await verifier.recompute(session_id="s", layers=layers(tiny_model, i), start_pos=pos, x=x, history=[])
        torch.testing.assert_close(y, run.outputs[a][0], rtol=1e-5, atol=1e-5)
    assert verifier.recomputed_steps == 3


async def test_catch_up_from_the_trace_in_one_chunk(tiny_model, verifier: Verifier) -> None:
    run = run_session(tiny_model, 12)
    for i, (a, _) in enumerate(RANGES):
        for k in (5, 6, 11):  # first check mid-session, then the next step, then after a gap
            pos, x = run.inputs[a][k]
            y = await verifier.recompute(
                session_id="s", layers=layers(tiny_model, i), start_pos=pos, x=x, history=run.trace.steps(a, before=pos)
            )
            torch.testing.assert_close(y, run.outputs[a][k], rtol=1e-4, atol=1e-4)
        pos, x = run.inputs[a][11]  # the same step sent again: recomputed, not appended
        y = await verifier.recompute(
            session_id="s", layers=layers(tiny_model, i), start_pos=pos, x=x, history=run.trace.steps(a, before=pos)
        )
        torch.testing.assert_close(y, run.outputs[a][11], rtol=1e-4, atol=1e-4)


async def test_a_gap_in_the_history_cannot_be_checked(tiny_model, verifier: Verifier) -> None:
    run = run_session(tiny_model, 4)
    history = run.trace.steps(2, before=run.inputs[2][3][0])
    del history[1]
    pos, x = run.inputs[2][3]
    with pytest.raises(RequestFailed, match="do not cover"):
        await verifier.recompute(session_id="s", layers=layers(tiny_model, 1), start_pos=pos, x=x, history=history)


async def test_shards_are_bounded_and_sessions_forgotten(tiny_model) -> None:  # noqa: ANN001
    verifier = Verifier(tiny_model, max_layers=4)
    try:
        run = run_session(tiny_model, 2)
        for i, (a, _) in enumerate(RANGES):
            pos, x = run.inputs[a][1]
            await verifier.recompute(session_id="s", layers=layers(tiny_model, i), start_pos=pos, x=x,
                                     history=run.trace.steps(a, before=pos))
        assert list(verifier._shards) == [(2, 4), (4, 6)]  # the least recently used range went
        assert {k[1] for k in verifier._caches} == {2, 4}
        verifier.end_session("s")
        await verifier.recompute(session_id="t", layers=layers(tiny_model, 2), start_pos=0,
                                 x=run.inputs[4][0][1], history=[])
        assert set(verifier._caches) == {("t", 4, 6)}
    finally:
        verifier.close()


async def audit_session(auditor: Auditor, model, run: Run, link: FakeLink, *, stage: int, steps: int,  # noqa: ANN001
                        perturb: float = 0.0) -> list[torch.Tensor]:
    """Hand the auditor each step of one stage as if ``link`` had answered it; the outputs it lets through."""
    a = RANGES[stage][0]
    used = []
    for k in range(steps):
        pos, x = run.inputs[a][k]
        y = perturbed(run.outputs[a][k], perturb, generator=torch.Generator().manual_seed(k))
        used.append(await auditor.check(link, session_id="s", layers=layers(model, stage), start_pos=pos, x=x,  # type: ignore[arg-type]
                                        y=y, trace=run.trace))
    return used


async def test_an_honest_volunteer_passes_probation(tiny_model, verifier: Verifier) -> None:
    auditor = Auditor(verifier, TrustPolicy(probation_steps=8, verify_share=0.0), dtype="float32")
    run = run_session(tiny_model, 10)
    link = FakeLink(NodeId("honest"))
    used = await audit_session(auditor, tiny_model, run, link, stage=1, steps=10)
    assert all(u is o for u, o in zip(used, run.outputs[2], strict=True))  # its own outputs went on
    trust = auditor.trust("honest")
    assert (trust.state, trust.strikes, trust.verified_steps) == (TrustState.TRUSTED, 0, 8)
    assert trust.last_error < 1e-5


async def test_a_perturbing_volunteer_is_corrected_struck_and_quarantined(tiny_model, verifier: Verifier) -> None:
    strikes, quarantines = [], []
    auditor = Auditor(
        verifier, TrustPolicy(probation_steps=64, strikes_to_quarantine=3), dtype="float32",
        on_strike=lambda link, trust, verdict: strikes.append((trust.strikes, verdict.error)),
        on_quarantine=lambda link, trust: quarantines.append(link.node_id),
    )
    run = run_session(tiny_model, 5)
    link = FakeLink(NodeId("bad"))
    used = await audit_session(auditor, tiny_model, run, link, stage=2, steps=5, perturb=0.05)
    for u, honest in zip(used, run.outputs[4], strict=True):  # the pool went on with the right logits
        torch.testing.assert_close(u, honest, rtol=1e-4, atol=1e-4)
    assert [s for s, _ in strikes] == [1, 2, 3, 4, 5] and all(0.02 < e < 0.1 for _, e in strikes)
    assert quarantines == ["bad"]  # once
    assert auditor.trust("bad").state is TrustState.QUARANTINED


async def test_compressed_links_are_checked_as_they_travel(tiny_model, verifier: Verifier) -> None:
    auditor = Auditor(verifier, TrustPolicy(probation_steps=64), dtype="float32")
    run = run_session(tiny_model, 6, codec="int8")
    link = FakeLink(NodeId("lan"), codec="int8")
    await audit_session(auditor, tiny_model, run, link, stage=1, steps=6)
    assert auditor.trust("lan").strikes == 0 and auditor.trust("lan").verified_steps == 6
    await audit_session(auditor, tiny_model, run, link, stage=1, steps=2, perturb=0.05)
    assert auditor.trust("lan").strikes == 2


async def test_unverifiable_steps_pass_unchecked(tiny_model, verifier: Verifier) -> None:
    auditor = Auditor(verifier, TrustPolicy(), dtype="float32")
    run = run_session(tiny_model, 3)
    pos, x = run.inputs[2][2]
    y = run.outputs[2][2]
    link = FakeLink(NodeId("n"))
    assert await auditor.check(link, session_id="s", layers=layers(tiny_model, 1), start_pos=pos, x=x, y=y,  # type: ignore[arg-type]
                               trace=None) is y
    assert await auditor.check(link, session_id="s", layers=layers(tiny_model, 1), start_pos=pos, x=x, y=y,  # type: ignore[arg-type]
                               trace=SessionTrace()) is y  # nothing recorded: a gap
    assert auditor.trust("n").audits == 0


async def test_a_closed_verifier_ignores_housekeeping(tiny_model) -> None:  # noqa: ANN001
    verifier = Verifier(tiny_model)
    verifier.close()
    verifier.end_session("s")  # sessions ending while the coordinator stops must not raise
    verifier.warm([layers(tiny_model, 0)])


def test_top_logits_are_compared_at_their_ids_and_against_the_true_top() -> None:
    from core.protocol.top_logits import densify, top_logits
    from server.validation import tolerance_for
    from server.verifier import compare_output

    tol = tolerance_for("float32", "cpu")
    expected = torch.randn(1, 500, generator=torch.Generator().manual_seed(3)) * 5
    values, ids = top_logits(expected, 16)
    assert compare_output(expected, densify(values, ids, 500), tol).agree
    assert compare_output(expected, expected.clone(), tol).agree  # full logits: the plain comparison
    scaled = densify(values * 1.05, ids, 500)  # wrong values at the right ids
    assert not compare_output(expected, scaled, tol).agree
    order = expected.argsort(descending=True)
    skipped = order[:, 1:17].to(torch.int32)  # the true top token left out, the 17th put in its place
    assert not compare_output(expected, densify(expected.gather(-1, skipped.long()), skipped, 500), tol).agree
