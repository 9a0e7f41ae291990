"""Frozen, typed values shared by the coordinator and the volunteers.

Ids are distinct ``NewType``s so a node id can never be passed where a session id
is expected. Layer ranges are half-open ``[start, end)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

NodeId = NewType("NodeId", str)
"""A volunteer's id: the fingerprint of its Ed25519 public key."""

SessionId = NewType("SessionId", str)
"""One generation session (one request) flowing through a pipeline."""

PoolId = NewType("PoolId", str)
"""A pool's id: the fingerprint of the coordinator's Ed25519 pool key."""


@dataclass(frozen=True, slots=True, order=True)
class LayerRange:
    """Half-open range of decoder layers ``[start, end)`` of a model with ``total`` layers."""

    start: int
    end: int
    total: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end <= self.total):
            raise ValueError(f"invalid layer range [{self.start}, {self.end}) of {self.total}")

    @property
    def is_first(self) -> bool:
        """This range holds layer 0, so its stage also owns the token embedding."""
        return self.start == 0

    @property
    def is_last(self) -> bool:
        """This range holds the final layer, so its stage also owns final norm + LM head."""
        return self.end == self.total

    def __len__(self) -> int:
        return self.end - self.start

    def __contains__(self, layer: object) -> bool:
        return isinstance(layer, int) and self.start <= layer < self.end

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """What one volunteer offers, as measured on its own machine.

    ``seconds_per_layer`` is the measured time of one decode step through one
    layer of the pool's model in the pool's dtype; ``prefill_seconds_per_layer`` the
    same for a prefill chunk of ``prefill_tokens`` tokens. ``memory_bytes`` is the
    memory the user lets Butterfly use. ``rtt_s`` and ``bandwidth_bytes_per_s``
    describe its link to the coordinator (measured at join; 0 / inf when unknown).
    ``slowdown`` is a debug multiplier the volunteer applies to its own compute.
    """

    node_id: NodeId
    device: str = "cpu"
    memory_bytes: int = 0
    seconds_per_layer: float = 0.0
    prefill_seconds_per_layer: float = 0.0
    prefill_tokens: int = 0
    threads: int = 1
    rtt_s: float = 0.0
    bandwidth_bytes_per_s: float = float("inf")
    name: str = ""
    os: str = ""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The sizes of a model that planning needs, derived from its config and manifest.

    ``layer_bytes`` is the weight size of one decoder layer in the serving dtype,
    ``embed_bytes`` the token embedding (first stage), ``head_bytes`` final norm plus
    LM head (last stage; 0 extra when tied and the stage also holds the embedding is
    *not* assumed — tied weights are counted on both ends because each stage keeps
    its own copy). ``kv_bytes_per_token_layer`` is the KV cache size of one token in
    one layer; ``activation_bytes`` what one token's hidden state costs on the wire.
    """

    name: str
    num_layers: int
    layer_bytes: int
    embed_bytes: int
    head_bytes: int
    kv_bytes_per_token_layer: int
    activation_bytes: int
    context_tokens: int = 2048
    concurrency: int = 4

    def stage_bytes(self, layers: LayerRange) -> int:
        """Memory a stage holding ``layers`` needs: weights plus its KV budget."""
        total = len(layers) * (
            self.layer_bytes + self.kv_bytes_per_token_layer * self.context_tokens * self.concurrency
        )
        if layers.is_first:
            total += self.embed_bytes
        if layers.is_last:
            total += self.head_bytes
        return total


@dataclass(frozen=True, slots=True)
class StageAssignment:
    """One volunteer serving one contiguous layer range in one pipeline."""

    node_id: NodeId
    layers: LayerRange
    estimated_step_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Pipeline:
    """An ordered chain of stages that together cover every layer exactly once."""

    stages: tuple[StageAssignment, ...]

    @property
    def bottleneck_s(self) -> float:
        """The slowest stage's estimated step time (compute + transfer)."""
        return max((s.estimated_step_s for s in self.stages), default=0.0)

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        return tuple(s.node_id for s in self.stages)


@dataclass(frozen=True, slots=True)
class Plan:
    """A placement of the model on the pool: one or more full pipelines.

    Two pipelines whose stages share a layer range are replicas of that stage.
    """

    pipelines: tuple[Pipeline, ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        return not self.pipelines

    @property
    def bottleneck_s(self) -> float:
        return min((p.bottleneck_s for p in self.pipelines), default=float("inf"))

    def assignments_for(self, node_id: NodeId) -> tuple[StageAssignment, ...]:
        """Every stage this node serves across all pipelines."""
        return tuple(s for p in self.pipelines for s in p.stages if s.node_id == node_id)

    @property
    def node_ids(self) -> frozenset[NodeId]:
        return frozenset(s.node_id for p in self.pipelines for s in p.stages)
