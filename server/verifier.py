"""The coordinator's own check of volunteers' results (see :mod:`server.validation` for the policy).

:class:`Verifier` recomputes one stage's output for one step on the coordinator's CPU. It
builds its own :class:`~core.model.shard.Shard` per layer range from the very tensors the
pool hands volunteers for that range (the model store's tensors, by the names of
:func:`~core.model.weights.shard_tensor_names`; a GGUF model was dequantized once at import,
so both sides hold identical weights), lazily and at most a bounded number of layers at a
time. Per (session, range) it keeps its own KV cache; when a check comes after steps it did
not see, the cache catches up from the session's recorded stage inputs
(:class:`server.generation.SessionTrace`), all missing positions in one chunk. Everything
runs in one worker thread, so the event loop is never blocked and a session's caches are
only ever touched in order. Where a link compresses activations (:mod:`core.protocol.codec`),
the verifier computes on the inputs as the volunteer received them, and compares outputs
as they arrived: both sides pass through the same codec.

:class:`Auditor` decides which steps to check (:func:`server.validation.should_audit`),
compares, keeps the :class:`~server.validation.TrustLedger`, and hands back the output the
pipeline should use: the volunteer's when it agreed, the coordinator's when it did not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from core.errors import ButterflyError, RequestFailed
from core.model.shard import Shard
from core.model.weights import shard_tensor_names
from core.protocol.codec import decode, encode
from core.types import LayerRange
from core.protocol.top_logits import sparse_part
from server.validation import (
    Tolerance,
    TrustLedger,
    TrustPolicy,
    TrustState,
    Verdict,
    VolunteerTrust,
    compare,
    record,
    should_audit,
    tolerance_for,
)

if TYPE_CHECKING:
    from core.model.kv_cache import KVCache
    from core.store.store import StoredModel
    from server.links import VolunteerLink

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class StepHistory(Protocol):
    """The recorded inputs of a session's stages (``SessionTrace`` offers this)."""

    def steps(self, layer: int, *, before: int) -> list[tuple[int, torch.Tensor]]:
        """The recorded steps entering ``layer`` that start before position ``before``, in order."""
        ...


class Verifier:
    """Recomputes stage outputs on this machine's CPU, with its own shards and KV caches.

    ``max_layers`` bounds the decoder layers held in built shards at once (least recently
    used ranges are dropped first); default: twice the model's layers, so a re-plan's new
    ranges can be built while the old ones are still checked.
    """

    def __init__(self, model: StoredModel, *, dtype: str = "float32", max_tokens: int | None = None,
                 max_layers: int | None = None) -> None:
        if dtype not in _DTYPES:
            raise RequestFailed(f"the verifier cannot compute in {dtype}", hint="use float32 or bfloat16")
        self.model = model
        self.config = model.config
        self.dtype = _DTYPES[dtype]
        self.max_tokens = max_tokens
        self.max_layers = max_layers if max_layers is not None else 2 * self.config.num_layers
        self._shards: OrderedDict[tuple[int, int], Shard] = OrderedDict()
        self._caches: dict[tuple[str, int, int], KVCache] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="verifier")
        self._closed = False
        self.recomputed_steps = 0
        self.compute_s = 0.0

    # --- on the event loop ---------------------------------------------------------

    async def recompute(self, *, session_id: str, layers: LayerRange, start_pos: int, x: torch.Tensor,
                        history: Sequence[tuple[int, torch.Tensor]], codec: str = "model") -> torch.Tensor:
        """The output stage ``layers`` must give for ``x`` at ``start_pos`` in this session.

        ``history`` is every earlier step's input to ``layers.start`` (position, tensor);
        the steps this verifier's cache lacks are fed first, as one chunk. Inputs are taken
        as they travel under ``codec``. Raises :class:`RequestFailed` when the history has a gap.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._recompute, session_id, layers, start_pos, x, list(history), codec
        )

    def warm(self, ranges: Iterable[LayerRange]) -> None:
        """Start building the shards of ``ranges`` in the background (e.g. right after a re-plan)."""
        for layers in ranges:
            self._submit(self._shard_quietly, layers)

    def end_session(self, session_id: str) -> None:
        """Forget the session's caches (in order with any check still queued for it)."""
        self._submit(self._drop, session_id)

    def close(self) -> None:
        """Stop the worker thread; checks still queued are cancelled, later housekeeping is ignored."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        if not self._closed:
            self._executor.submit(fn, *args)

    # --- in the worker thread ------------------------------------------------------

    def _recompute(self, session_id: str, layers: LayerRange, start_pos: int, x: torch.Tensor,
                   history: list[tuple[int, torch.Tensor]], codec: str) -> torch.Tensor:
        started = time.perf_counter()
        shard = self._shard(layers)
        key = (session_id, layers.start, layers.end)
        cache = self._caches.get(key)
        if cache is not None and cache.length > start_pos:
            cache.truncate(start_pos)  # the step is sent again: recompute it
        base = cache.length if cache is not None else 0
        missing = [(pos, t) for pos, t in history if pos >= base]
        if cache is None or not _contiguous(missing, base, start_pos):
            cache = self._caches[key] = shard.new_cache(max_tokens=self.max_tokens)
            missing = list(history)
            if not _contiguous(missing, 0, start_pos):
                raise RequestFailed(
                    f"the recorded inputs of layer {layers.start} do not cover positions 0..{start_pos}",
                    hint="the step cannot be checked; it is accepted unchecked",
                )
        if missing:
            shard(torch.cat([as_sent(t, codec) for _, t in missing]), cache)
        y = shard(as_sent(x, codec), cache)
        self.recomputed_steps += 1
        self.compute_s += time.perf_counter() - started
        return y

    def _shard(self, layers: LayerRange) -> Shard:
        span = (layers.start, layers.end)
        shard = self._shards.get(span)
        if shard is not None:
            self._shards.move_to_end(span)
            return shard
        names = shard_tensor_names(self.config, layers)
        shard = Shard(self.config, layers, {name: self.model.tensor(name) for name in names}, dtype=self.dtype)
        self._shards[span] = shard
        while len(self._shards) > 1 and sum(e - s for s, e in self._shards) > self.max_layers:
            old, _ = self._shards.popitem(last=False)
            for cache_key in [k for k in self._caches if (k[1], k[2]) == old]:
                del self._caches[cache_key]
        return shard

    def _shard_quietly(self, layers: LayerRange) -> None:
        try:
            self._shard(layers)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation; a real check reports it
            log.warning("could not build the verifier's shard for layers %s: %s", layers, exc)

    def _drop(self, session_id: str) -> None:
        for key in [k for k in self._caches if k[0] == session_id]:
            del self._caches[key]


def as_sent(t: torch.Tensor, codec: str) -> torch.Tensor:
    """``t`` as the receiver sees it after travelling under ``codec`` (token ids and ``model``: itself)."""
    if codec == "model" or not t.is_floating_point():
        return t
    return decode(encode(t, codec), dtype=t.dtype)


def compare_output(expected: torch.Tensor, got: torch.Tensor, tol: Tolerance) -> Verdict:
    """:func:`~server.validation.compare`, also for a last stage that sent its top logits only.

    Such an answer (dense, ``-inf`` outside the top ``k``; :mod:`core.protocol.top_logits`)
    must agree with the recomputed logits at the ids it names, and its values with the
    recomputed top ``k``: so the ids it names are, within tolerance, the largest ones.
    """
    sparse = sparse_part(got) if got.dim() == 2 and got.shape == expected.shape else None
    if sparse is None:
        return compare(expected, got, tol)
    values, ids = sparse
    at_ids = compare(expected.gather(-1, ids.long()), values, tol)
    if not at_ids.agree:
        return at_ids
    ranked = compare(torch.topk(expected, values.shape[-1], dim=-1).values, values, tol)
    return ranked if not ranked.agree else Verdict(True, max(at_ids.error, ranked.error))


def _contiguous(steps: Sequence[tuple[int, torch.Tensor]], start: int, end: int) -> bool:
    """Whether ``steps`` cover positions ``start .. end`` exactly, in order."""
    pos = start
    for step_pos, t in steps:
        if step_pos != pos:
            return False
        pos += int(t.shape[0])
    return pos == end


class Auditor:
    """Checks the steps :func:`~server.validation.should_audit` picks and keeps the trust ledger.

    ``on_strike(link, trust, verdict)`` is called for every disagreement and
    ``on_quarantine(link, trust)`` once, when a volunteer's strikes quarantine it. ``rng``
    picks trusted volunteers' checks; ``clock`` stamps state changes.
    """

    def __init__(
        self,
        verifier: Verifier,
        policy: TrustPolicy,
        *,
        dtype: str,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_strike: Callable[[VolunteerLink, VolunteerTrust, Verdict], None] | None = None,
        on_quarantine: Callable[[VolunteerLink, VolunteerTrust], None] | None = None,
    ) -> None:
        self.verifier = verifier
        self.ledger = TrustLedger(policy)
        self.dtype = dtype
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_strike = on_strike or (lambda link, trust, verdict: None)
        self._on_quarantine = on_quarantine or (lambda link, trust: None)
        self._warned: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether any step would ever be checked under this policy."""
        policy = self.ledger.policy
        return policy.probation_steps > 0 or policy.verify_share > 0.0

    def trust(self, node_id: str) -> VolunteerTrust:
        """The ledger's record of ``node_id``."""
        return self.ledger.get(node_id)

    async def check(self, link: VolunteerLink, *, session_id: str, layers: LayerRange, start_pos: int,
                    x: torch.Tensor, y: torch.Tensor, trace: StepHistory | None) -> torch.Tensor:
        """The output to use for this step of ``link``'s stage: ``y`` if unchecked or agreed, else the recomputed one.

        A step that cannot be checked (no trace, a gap in it, a verifier failure) is
        accepted as it is and logged once per cause.
        """
        if trace is None or not should_audit(self.ledger, link.node_id, self._rng):
            return y
        codec = link.codec
        try:
            expected = await self.verifier.recompute(
                session_id=session_id, layers=layers, start_pos=start_pos, x=x,
                history=trace.steps(layers.start, before=start_pos), codec=codec,
            )
        except (ButterflyError, ValueError, RuntimeError) as exc:
            reason = str(exc)
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("could not check a step of %s (layers %s): %s", link.name, layers, reason)
            return y
        arrived = as_sent(expected, link.logits_codec if layers.is_last else codec)
        verdict = compare_output(arrived, y, tolerance_for(self.dtype, link.profile.device))
        before = self.ledger.get(link.node_id).state
        self.ledger = record(self.ledger, link.node_id, verdict, now=self._clock())
        if verdict.agree:
            return y
        trust = self.ledger.get(link.node_id)
        log.warning("%s disagreed on layers %s at position %d: %s (strike %d)",
                    link.name, layers, start_pos, verdict.reason, trust.strikes)
        self._on_strike(link, trust, verdict)
        if trust.state is TrustState.QUARANTINED and before is not TrustState.QUARANTINED:
            self._on_quarantine(link, trust)
        return expected.to(y.dtype)

    def close(self) -> None:
        """Stop the verifier's worker thread."""
        self.verifier.close()


__all__ = ["Auditor", "StepHistory", "Verifier", "as_sent", "compare_output"]
