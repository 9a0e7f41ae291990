"""Top logits on the wire: what the last stage sends when sampling reads no more than them."""

from __future__ import annotations

import pytest
import torch

from core.errors import ProtocolViolation
from core.protocol.top_logits import check_top_logits, densify, sparse_part, top_logits
from server.sampling import LOGITS_TOP, Sampler, SamplingParams, logits_needed

VOCAB = 1000


def logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 4.0


def test_the_top_values_come_sorted_with_int32_ids_and_densify_restores_them() -> None:
    full = logits(2)
    values, ids = top_logits(full, 8)
    assert values.shape == ids.shape == (2, 8) and ids.dtype == torch.int32
    assert torch.equal(values, full.topk(8).values)
    dense = densify(values, ids, VOCAB)
    assert torch.equal(dense.gather(-1, ids.long()), values)
    assert int(torch.isfinite(dense).sum()) == 16
    back = sparse_part(dense)
    assert back is not None and torch.equal(back[0], values) and torch.equal(back[1], ids)
    assert sparse_part(full) is None


@pytest.mark.parametrize("params", [
    SamplingParams(),  # greedy
    SamplingParams(temperature=0.8, top_k=40),
    SamplingParams(temperature=1.3, top_k=LOGITS_TOP, top_p=0.9),
])
def test_sampling_from_the_top_logits_picks_exactly_what_the_full_logits_give(params: SamplingParams) -> None:
    k = logits_needed(params)
    assert k == LOGITS_TOP
    full_sampler, top_sampler = Sampler(params, seed=7), Sampler(params, seed=7)
    for seed in range(50):
        full = logits(seed=seed)
        values, ids = top_logits(full, k)
        assert full_sampler.sample(full) == top_sampler.sample(densify(values, ids, VOCAB))


def test_sampling_the_whole_vocabulary_asks_for_every_logit() -> None:
    assert logits_needed(SamplingParams(temperature=0.7)) == 0
    assert logits_needed(SamplingParams(temperature=0.7, top_p=0.9)) == 0
    assert logits_needed(SamplingParams(temperature=0.7, top_k=LOGITS_TOP + 1)) == 0


@pytest.mark.parametrize(("values", "ids", "match"), [
    (torch.zeros(1, 7), torch.zeros(1, 7, dtype=torch.int32), r"expected \[rows, 8\]"),
    (torch.zeros(3, 8), torch.arange(24, dtype=torch.int32).reshape(3, 8), "3 rows"),
    (torch.zeros(1, 8), torch.arange(8, dtype=torch.int64).reshape(1, 8), "int32"),
    (torch.zeros(1, 8), torch.tensor([[0, 1, 2, 3, 4, 5, 6, VOCAB]], dtype=torch.int32), "outside the vocabulary"),
    (torch.zeros(1, 8), torch.tensor([[0, 1, 2, 3, 4, 5, 6, -1]], dtype=torch.int32), "outside the vocabulary"),
    (torch.full((1, 8), float("nan")), torch.arange(8, dtype=torch.int32).reshape(1, 8), "non-finite"),
    (torch.zeros(1, 8), torch.tensor([[0, 1, 2, 3, 4, 5, 6, 6]], dtype=torch.int32), "twice"),
])
def test_bad_top_logits_are_refused(values: torch.Tensor, ids: torch.Tensor, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        check_top_logits(values, ids, vocab_size=VOCAB, tokens=2, k=8)


def test_good_top_logits_pass_the_check() -> None:
    values, ids = top_logits(logits(2), 8)
    check_top_logits(values, ids, vocab_size=VOCAB, tokens=2, k=8)
    check_top_logits(values[:1], ids[:1], vocab_size=VOCAB, tokens=2, k=8)
