"""Token sampling and stop conditions: pure functions of logits, parameters and a seeded generator.

The coordinator samples every token itself, so a request's randomness never depends on
which volunteers served it: the same seed gives the same tokens across re-plans and
recoveries. Greedy decoding is ``temperature == 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.errors import ConfigError

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable those filters.
    ``seed`` makes sampling reproducible; ``None`` draws a fresh seed per request.
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 1_000_000:
            raise ConfigError(f"max_tokens must be between 1 and 1000000, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ConfigError(f"temperature must be between 0 and 100, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_STRINGS or any(
            not s or len(s) > MAX_STOP_CHARS for s in self.stop
        ):
            raise ConfigError(
                f"stop takes at most {MAX_STOP_STRINGS} non-empty strings of at most "
                f"{MAX_STOP_CHARS} characters"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


LOGITS_TOP = 64
"""How many of the largest logits the last stage returns when sampling reads no more than those."""


def logits_needed(params: SamplingParams) -> int:
    """How many of the largest logits per row sampling with ``params`` can ever read; 0: all of them.

    Greedy reads the largest; top-k sampling (``top_k <= LOGITS_TOP``) reads the ``top_k``
    largest, and its softmax and top-p cut are computed over those alone. Sampling the
    whole vocabulary needs every logit.
    """
    if params.greedy:
        return LOGITS_TOP
    if 0 < params.top_k <= LOGITS_TOP:
        return LOGITS_TOP
    return 0


class Sampler:
    """Picks the next token from fp32 logits; owns the request's seeded generator."""

    def __init__(self, params: SamplingParams, *, seed: int) -> None:
        self.params = params
        self._generator = torch.Generator().manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        """Return the next token id for logits of shape ``[vocab]`` or ``[1, vocab]``."""
        row = logits.reshape(-1).float()
        if self.params.greedy:
            return int(torch.argmax(row))
        row = row / self.params.temperature
        if self.params.top_k:
            k = min(self.params.top_k, row.numel())
            threshold = torch.topk(row, k).values[-1]
            row = row.masked_fill(row < threshold, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if self.params.top_p < 1.0:
            probs = _top_p_filter(probs, self.params.top_p)
        return int(torch.multinomial(probs, 1, generator=self._generator))


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalise."""
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # A token stays if the mass before it is below top_p (so the first token always stays).
    keep_sorted = (cumulative - sorted_probs) < top_p
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    filtered = probs * keep
    return filtered / filtered.sum()


@dataclass(frozen=True, slots=True)
class StopMatch:
    """Text that may be released now, and whether a stop string ended the output."""

    text: str
    stopped: bool


class StopStringMatcher:
    """Streams text while holding back any tail that could still become a stop string.

    ``push(delta)`` returns the text that is safe to show; once a stop string appears,
    the text before it is released, ``stopped`` is set and nothing more is emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def push(self, delta: str) -> StopMatch:
        if self.stopped:
            return StopMatch("", True)
        if not self._stops:
            return StopMatch(delta, False)
        self._held += delta
        cut = min((i for s in self._stops if (i := self._held.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return StopMatch(out, True)
        keep = _longest_stop_prefix_suffix(self._held, self._stops)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return StopMatch(out, False)

    def flush(self) -> str:
        """Release whatever is held back once generation ends without a stop string."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
