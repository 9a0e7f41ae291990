"""Sampling is a pure function of logits, parameters and the seed; stop strings never leak."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ConfigError
from server.sampling import Sampler, SamplingParams, StopStringMatcher


def test_greedy_picks_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    assert Sampler(SamplingParams(), seed=0).sample(logits) == 1


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50)
    runs = [[Sampler(params, seed=s).sample(logits) for _ in range(1)] for s in (7, 7)]
    assert runs[0] == runs[1]
    a = Sampler(params, seed=7)
    b = Sampler(params, seed=8)
    seq_a = [a.sample(logits) for _ in range(20)]
    seq_b = [b.sample(logits) for _ in range(20)]
    assert seq_a != seq_b


def test_top_k_and_top_p_restrict_the_choice() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0, -2.0])
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=2), seed=3)
    assert {sampler.sample(logits) for _ in range(200)} <= {0, 1}
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5), seed=3)
    assert {sampler.sample(logits) for _ in range(200)} == {0}


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(stop=("",)), dict(stop=("x",) * 9)],
)
def test_bad_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


def test_stop_string_split_across_deltas_is_held_back() -> None:
    m = StopStringMatcher(["</end>"])
    out = [m.push(d) for d in ["Hello </", "en", "d> more"]]
    assert "".join(o.text for o in out) == "Hello "
    assert out[-1].stopped and m.stopped


def test_false_alarm_prefix_is_released() -> None:
    m = StopStringMatcher(["STOP"])
    text = "".join(m.push(d).text for d in ["ST", "OR", "Y"]) + m.flush()
    assert text == "STORY"


@given(st.lists(st.text(alphabet="abS", max_size=4), max_size=12))
def test_stream_equals_text_cut_at_first_stop(deltas: list[str]) -> None:
    stop = "abS"
    m = StopStringMatcher([stop])
    streamed = "".join(m.push(d).text for d in deltas) + m.flush()
    full = "".join(deltas)
    expected = full[: full.find(stop)] if stop in full else full
    assert streamed == expected
