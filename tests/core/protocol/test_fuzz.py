"""Property-based fuzzing of the wire protocol: frames, messages and the connection state machine.

The property, for every generated input: it is accepted, or refused with a
:class:`ButterflyError` (ProtocolViolation, FrameTooLarge, VersionMismatch) and never any
other exception; and decoding allocates in proportion to the bytes that actually arrived,
never to what a header claims. Accepted input must also be *sound*: within the limits,
re-encodable, and leaving the state machine consistent.

The targets (``TARGETS``: a strategy plus a checker each) are shared with
``scripts/bench_fuzz.py``, which runs them at a budget of 100,000 inputs and more.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.errors import ButterflyError, FrameTooLarge, ProtocolViolation
from core.protocol.frames import DTYPES, MAGIC, PREFIX_BYTES, PROTOCOL_VERSION, Frame, Limits, decode_frame, encode_frame
from core.protocol.messages import (
    Accepted,
    Assign,
    Auth,
    Bye,
    Challenge,
    Drain,
    Error,
    Heartbeat,
    Hello,
    Message,
    Ready,
    TensorChunk,
    decode_message,
    message_kinds,
)
from core.protocol.session import (
    MAX_ASSIGNMENTS,
    MAX_OUTSTANDING_STEPS,
    MAX_PENDING_FETCHES,
    _SENDER,
    ProtocolConnection,
    Role,
    State,
)
from tests.core.protocol.samples import every_message, same

C, V = Role.COORDINATOR, Role.VOLUNTEER
_M = TypeVar("_M", bound=Message)

# --- the allocation bound -------------------------------------------------------------

HEADER_EXPANSION: int = 40
"""Bytes a JSON header may briefly cost per header byte while parsed (Python objects:
an empty list or object costs ~60 bytes for its 3 characters ``[],``; the header text
itself may widen to 4 bytes per character)."""
BODY_EXPANSION: int = 3
"""Bytes the tensor payload may cost per payload byte: the private copy plus scratch of
the finiteness check."""
ALLOCATION_SLACK: int = 256 * 2**10
"""Fixed overhead allowed per input: exceptions, messages, small bookkeeping."""


def allocation_allowance(data: bytes) -> int:
    """The most one decode of ``data`` may allocate: in proportion to ``data``, never more.

    Bounded by the limits too, since a frame over ``max_frame_bytes`` is refused unread.
    """
    header = 0
    if len(data) >= PREFIX_BYTES:
        header = min(int.from_bytes(data[len(MAGIC) + 1 : PREFIX_BYTES], "little"), len(data) - PREFIX_BYTES)
    return BODY_EXPANSION * len(data) + HEADER_EXPANSION * header + ALLOCATION_SLACK


@dataclass(slots=True)
class Measured:
    """The outcome of one call under tracemalloc: ``label`` is "accepted" or the error class."""

    label: str
    peak_bytes: int
    value: Any = None
    error: ButterflyError | None = None


def measured(fn: Callable[..., Any], *args: Any) -> Measured:
    """Call ``fn(*args)``; return how it ended and the peak of memory it allocated.

    A :class:`ButterflyError` is an outcome; any other exception propagates (a crash).
    """
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        outcome = Measured("accepted", 0, value=fn(*args))
    except ButterflyError as exc:
        outcome = Measured(type(exc).__name__, 0, error=exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if not tracing:
            tracemalloc.stop()
    outcome.peak_bytes = peak
    return outcome


class FuzzFailure(AssertionError):
    """An input broke a property other than "no crash" (a bound, soundness, consistency)."""


def expect(condition: bool, problem: str) -> None:
    if not condition:
        raise FuzzFailure(problem)


# --- building blocks: seeds, JSON nasties, raw frames ---------------------------------


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws (Hypothesis favours the ends of a range, so not at an end)."""
    return draw(st.integers(0, one_in - 1)) == one_in // 2


def choose(*branches: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``branches``, each equally likely (``st.one_of`` weighs a branch by how many
    branches it flattens into, so a mapped ``one_of`` of 90 messages would crowd out the rest)."""
    return st.integers(0, len(branches) - 1).flatmap(lambda i: branches[i])


def raw_frame(header: bytes, body: bytes = b"", *, version: int = PROTOCOL_VERSION, magic: bytes = MAGIC,
              declared: int | None = None) -> bytes:
    """A frame assembled by hand, so every part can be wrong."""
    length = len(header) if declared is None else declared
    return magic + bytes([version]) + struct.pack("<I", length) + header + body


def split_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A valid frame's header (as JSON) and its tensor bytes."""
    length = int.from_bytes(data[len(MAGIC) + 1 : PREFIX_BYTES], "little")
    return json.loads(data[PREFIX_BYTES : PREFIX_BYTES + length]), data[PREFIX_BYTES + length :]


def _extra_seed_frames() -> list[bytes]:
    tensors = {name: (torch.arange(6) - 2).reshape(2, 3).to(dtype) for name, dtype in DTYPES.items()}
    names = list(tensors)
    return [
        encode_frame("forward", {"step_id": 1}, {n: tensors[n] for n in names[:4]}),
        encode_frame("result", {"note": [1, 2.5, None, True, {"a": "é"}]}, {n: tensors[n] for n in names[4:]}),
        encode_frame("k", {}),
        encode_frame("k", {}, {"empty": torch.zeros(0, 5, 0), "scalar": torch.tensor(1.5)}),
    ]


SEED_FRAMES: tuple[bytes, ...] = tuple(m.to_frame() for m in every_message()) + tuple(_extra_seed_frames())

_BIG = 2**64
RAW_SNIPPETS: tuple[str, ...] = (
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "2e308", "1E+400", "0.1e-99999", "-0", "-0.0",
    "9" * 5000, "-" + "9" * 400, "1" + "0" * 400, "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000,
    '{"a":1,"a":2}', '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', "123456789012345678901234567890",
    "[1,]", "{,}", "01", "1.", ".5", "+1", "0x10", "true false", '"unterminated',
)
"""JSON text a JSON encoder cannot produce: non-finite numbers, huge or deep values,
duplicate keys, lone surrogates, plain syntax errors."""

_RAW_MARK = "\x01raw{}\x01"

EDGE_INTS = st.sampled_from([
    -1, 0, 1, 2, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, _BIG, -(2**63) - 1,
    10**30, 10**400, -(10**400),
])
EDGE_FLOATS = st.sampled_from([0.0, -0.0, 0.5, 1e-320, 5e-324, 1e308, -1e308, 1.7976931348623157e308,
                               float("nan"), float("inf"), float("-inf")])
EDGE_TEXTS = st.sampled_from([
    "", "x", "a1", "s1", "float32", "bfloat16", "float64", "bool", "Q4_1", "F32", "forward", "result", "hello",
    "\ud800", "\udfff", "é" * 70, "🦋" * 40, "x" * 5000, "AAAA", "A" * 43 + "=", "0" * 64, "f" * 63 + "G",
])
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), EDGE_INTS, st.floats(allow_nan=False, allow_infinity=False), EDGE_FLOATS,
    st.text(max_size=12), EDGE_TEXTS,
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6) | EDGE_TEXTS, inner, max_size=4),
    max_leaves=12,
)
RAW_VALUES = st.integers(0, len(RAW_SNIPPETS) - 1).map(lambda i: _RAW_MARK.format(i))
NASTY = choose(JSON_VALUES, EDGE_INTS, EDGE_FLOATS, EDGE_TEXTS, RAW_VALUES, RAW_VALUES)
"""Any value a hostile header may hold at any place."""


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


@st.composite
def mutated_tree(draw: st.DrawFn, tree: dict[str, Any]) -> Any:
    """``tree`` with 1-3 edits at random places: a value replaced, removed or added."""
    tree = copy.deepcopy(tree)
    if rarely(draw, 20):
        return draw(NASTY)
    for _ in range(draw(st.integers(1, 3))):
        paths = [path for path in _paths(tree) if path]
        fields = [path for path in paths if path[0] not in ("kind", "tensors")]
        if fields and not rarely(draw, 5):  # mostly the message's own fields, at any depth
            paths = fields
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        parent = _parent(tree, path)
        if op == "replace":
            parent[path[-1]] = draw(NASTY)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8) | st.sampled_from(["kind", "tensors", "tensor_specs"]))] = draw(NASTY)
        else:
            parent.insert(draw(st.integers(0, len(parent))), draw(NASTY))
    return tree


@st.composite
def header_bytes(draw: st.DrawFn, tree: Any) -> bytes:
    """Encode a header tree as JSON text, then maybe spoil the bytes themselves."""
    ascii_only = draw(st.booleans())
    text = json.dumps(tree, ensure_ascii=ascii_only, allow_nan=True, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    for index, snippet in enumerate(RAW_SNIPPETS):
        text = text.replace(json.dumps(_RAW_MARK.format(index)), snippet)
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes bytes that are not UTF-8
    spoil = draw(st.sampled_from(["none"] * 6 + ["bad_utf8", "bom", "cut", "trail", "dup_key"]))
    if spoil == "bad_utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])) + data[at:]
    elif spoil == "bom":
        data = b"\xef\xbb\xbf" + data
    elif spoil == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif spoil == "trail":
        data += draw(st.sampled_from([b"}", b" ", b"\x00", b"{}", b"\n"]))
    elif spoil == "dup_key" and data.startswith(b"{") and len(data) > 2:
        data = b'{"kind":"x",' + data[1:]
    return data


# --- frame generators -----------------------------------------------------------------

NAN_BITS: dict[str, list[bytes]] = {
    "float32": [struct.pack("<I", b) for b in (0x7FC00000, 0x7F800000, 0xFF800000, 0x7F800001)],
    "bfloat16": [struct.pack("<H", b) for b in (0x7FC0, 0x7F80, 0xFF80, 0x7F81)],
    "float16": [struct.pack("<H", b) for b in (0x7E00, 0x7C00, 0xFC00, 0x7C01)],
}


@st.composite
def tensor_payload(draw: st.DrawFn, dtype: Any, shape: Any) -> bytes:
    """Bytes for a declared tensor: the right size or off by a little, sometimes with NaN/inf in it."""
    size = 0
    if isinstance(dtype, str) and dtype in DTYPES and isinstance(shape, list) and all(
        type(d) is int and 0 <= d <= 64 for d in shape
    ):
        size = math.prod(shape) * DTYPES[dtype].itemsize
    size = max(0, size + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -2, 8])))
    data = bytearray(draw(st.binary(min_size=size, max_size=size)) if size <= 512 else bytes(size))
    if isinstance(dtype, str) and dtype in NAN_BITS and size and draw(st.booleans()):
        bad = draw(st.sampled_from(NAN_BITS[dtype]))
        at = draw(st.integers(0, max(0, size - len(bad)))) // len(bad) * len(bad)
        data[at : at + len(bad)] = bad[: size - at]
    return bytes(data)


TENSOR_SPECS = st.fixed_dictionaries({
    "name": choose(st.sampled_from(["x", "y", "data", "payload"]), NASTY),
    "dtype": choose(st.sampled_from([*DTYPES, "float64", "bool", "F32", "Float32", ""]), st.sampled_from([*DTYPES]), NASTY),
    "shape": choose(
        st.lists(st.integers(0, 6), max_size=4),
        st.lists(choose(st.integers(-3, 2**70), EDGE_INTS, st.floats(0, 5), st.booleans()), max_size=7),
        NASTY,
    ),
})


@st.composite
def tensor_frames(draw: st.DrawFn) -> bytes:
    """A frame whose tensor list is generated: dtypes, shapes and payloads, right or wrong."""
    kind = draw(choose(st.sampled_from(sorted(message_kinds())), st.sampled_from(["", "k" * 65]), NASTY))
    specs = draw(st.lists(TENSOR_SPECS, max_size=6))
    fields = draw(st.dictionaries(st.text(max_size=8), NASTY, max_size=3))
    fields.update(kind=kind, tensors=specs)
    if rarely(draw, 10):
        fields["tensors"] = draw(NASTY)
    body = b"".join(draw(tensor_payload(s["dtype"], s["shape"])) for s in specs)
    return raw_frame(draw(header_bytes(fields)), body)


@st.composite
def mutated_headers(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame whose header was edited at random places (any depth), tensors kept."""
    header, body = split_frame(draw(seeds))
    header = draw(mutated_tree(header))
    if rarely(draw, 5):
        body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8))
    return raw_frame(draw(header_bytes(header)), body)


@st.composite
def spoiled_prefixes(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame with a wrong magic, version byte or declared header length."""
    data = draw(seeds)
    header_len = int.from_bytes(data[len(MAGIC) + 1 : PREFIX_BYTES], "little")
    header, body = data[PREFIX_BYTES : PREFIX_BYTES + header_len], data[PREFIX_BYTES + header_len :]
    part = draw(st.sampled_from(["magic", "version", "version", "length", "length"]))
    if part == "magic":
        return raw_frame(header, body, magic=draw(st.binary(min_size=4, max_size=4)))
    if part == "version":
        return raw_frame(header, body, version=draw(st.integers(0, 255).filter(lambda v: v != PROTOCOL_VERSION)))
    declared = draw(st.sampled_from([0, header_len - 1, header_len + 1, header_len + 2, header_len + len(body),
                                     header_len + len(body) + 1]) | st.integers(0, 2**32 - 1))
    return raw_frame(header, body, declared=min(max(declared, 0), 2**32 - 1))


@st.composite
def cut_or_extended(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame cut short, extended with junk, or two frames run together."""
    data = draw(seeds)
    how = draw(st.sampled_from(["cut", "extend", "double"]))
    if how == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    return data + draw(seeds)


@st.composite
def byte_mutations(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame with a few bytes flipped, set, inserted or deleted."""
    frame = bytearray(draw(seeds))
    for _ in range(draw(st.integers(1, 4))):
        if not frame:
            break
        pos = draw(st.integers(0, len(frame) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "flip":
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            frame[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[pos : pos + draw(st.integers(1, 8))]
    return bytes(frame)


RANDOM_BYTES = st.binary(max_size=300) | st.binary(max_size=300).map(
    lambda rest: MAGIC + bytes([PROTOCOL_VERSION]) + rest
)


def hostile_frames(seeds: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Every kind of generated input, built from the valid frames ``seeds`` draws."""
    return choose(
        RANDOM_BYTES,
        cut_or_extended(seeds),
        byte_mutations(seeds),
        spoiled_prefixes(seeds),
        mutated_headers(seeds),
        mutated_headers(seeds),
        tensor_frames(),
        seeds,
    )


LIMITS = choose(st.sampled_from([Limits(), Limits(), Limits(), Limits(allow_nonfinite=True)]), st.builds(
    Limits,
    max_frame_bytes=st.sampled_from([0, PREFIX_BYTES, 64, 256, 1024, 4096, 2**16]),
    max_header_bytes=st.sampled_from([0, 16, 128, 512, 2**20]),
    max_tensors=st.integers(0, 4),
    max_dims=st.integers(0, 4),
    allow_nonfinite=st.booleans(),
))
"""Half the time the real limits; sometimes small ones, so that every bound is met by small inputs."""


# --- valid messages with colliding ids, for the state machine --------------------------

ASSIGNMENT_IDS = st.sampled_from(["a1", "a2", "a3"])
SESSION_IDS = st.sampled_from(["s1", "s2"])
SMALL = st.integers(0, 3)
ACTIVATIONS = st.sampled_from([
    torch.tensor([1, 2, 3]), torch.ones(2, 8), torch.ones(1, 8, dtype=torch.bfloat16), torch.zeros(1, 8, dtype=torch.float16),
])
_DRAWN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "assignment_id": ASSIGNMENT_IDS,
    "session_id": SESSION_IDS,
    "step_id": SMALL,
    "seq": SMALL,
    "start_pos": SMALL,
    "offset": st.sampled_from([0, 64]),
    "length": st.sampled_from([1, 64]),
    "protocol_version": st.sampled_from([PROTOCOL_VERSION] * 4 + [0, PROTOCOL_VERSION + 1]),
    "x": ACTIVATIONS,
    "y": ACTIVATIONS,
}


@st.composite
def _varied(draw: st.DrawFn, sample: Message) -> Message:
    changes = {f.name: draw(_DRAWN_FIELDS[f.name]) for f in dataclasses.fields(sample) if f.name in _DRAWN_FIELDS}  # type: ignore[arg-type]
    if "assignment_id" in changes and hasattr(sample, "name"):
        changes["name"] = draw(st.sampled_from(["w0", "w1"]))
    if isinstance(sample, TensorChunk):
        size = draw(st.sampled_from([0, 1, 64, 65]))
        changes["data"] = torch.zeros(size, dtype=torch.uint8)
        changes["total"] = changes["offset"] + size + draw(st.sampled_from([0, 64]))
    if isinstance(sample, Error):
        changes["step_id"] = None if rarely(draw, 4) else draw(SMALL)
    try:
        return dataclasses.replace(sample, **changes)  # type: ignore[type-var]
    except ProtocolViolation:  # a drawn activation that does not fit the sample's codec: keep the sample's
        return dataclasses.replace(sample, **{k: v for k, v in changes.items() if k not in ("x", "y")})  # type: ignore[type-var]


_SAMPLES = every_message()


def valid_messages(sender: Role | None = None) -> st.SearchStrategy[Message]:
    """A legal message of any kind (only those ``sender`` may send, if given), its ids drawn
    from tiny sets so that they collide. Bye, which ends everything, comes less often."""
    return st.one_of(*[
        _varied(sample) for sample in _SAMPLES
        if sender is None or (type(sample) in _SENDER and _SENDER[type(sample)] in (sender, None))
        for _ in range(1 if isinstance(sample, Bye) else 4)
    ])


VALID_MESSAGES = valid_messages()
VALID_FRAMES = VALID_MESSAGES.map(lambda m: m.to_frame())


# --- target 1: the frame decoder ------------------------------------------------------


def check_frame(data: bytes, limits: Limits = Limits()) -> Measured:
    """Decode ``data``; refusals are fine, an accepted frame must respect ``limits`` and re-encode."""
    outcome = measured(decode_frame, data, limits)
    expect(outcome.peak_bytes <= allocation_allowance(data),
           f"decoding {len(data)} bytes allocated {outcome.peak_bytes} bytes")
    frame = outcome.value
    if frame is None:
        return outcome
    header_len = int.from_bytes(data[len(MAGIC) + 1 : PREFIX_BYTES], "little")
    expect(len(data) <= limits.max_frame_bytes and header_len <= limits.max_header_bytes, "accepted past the limits")
    expect(len(frame.tensors) <= limits.max_tensors, "accepted too many tensors")
    body = 0
    for tensor in frame.tensors.values():
        expect(tensor.dim() <= limits.max_dims and tensor.dtype in DTYPES.values(), f"accepted {tensor.dtype} {tensor.shape}")
        if tensor.is_floating_point() and not limits.allow_nonfinite:
            expect(bool(torch.isfinite(tensor).all()), "accepted a non-finite tensor")
        body += tensor.numel() * tensor.element_size()
    expect(body == len(data) - PREFIX_BYTES - header_len, "tensor bytes do not add up to the frame")
    again = decode_frame(encode_frame(frame.kind, frame.header, frame.tensors), Limits(max_frame_bytes=2**31))
    expect(_same_frame(frame, again), "an accepted frame does not survive re-encoding")
    return outcome


def _same_frame(a: Frame, b: Frame) -> bool:
    return a.kind == b.kind and a.header == b.header and a.tensors.keys() == b.tensors.keys() and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        for x, y in zip(a.tensors.values(), b.tensors.values(), strict=True)
    )


FRAME_INPUTS = st.tuples(hostile_frames(choose(st.sampled_from(SEED_FRAMES), VALID_FRAMES)), LIMITS)


# --- target 2: the message parser -----------------------------------------------------


def check_message(data: bytes) -> Measured:
    """Parse ``data`` as a message; an accepted message must re-encode to an equal message."""
    outcome = measured(decode_message, data)
    expect(outcome.peak_bytes <= allocation_allowance(data),
           f"parsing {len(data)} bytes allocated {outcome.peak_bytes} bytes")
    if outcome.value is not None:
        expect(same(decode_message(outcome.value.to_frame()), outcome.value), "an accepted message does not round-trip")
    return outcome


MESSAGE_INPUTS = choose(mutated_headers(VALID_FRAMES), mutated_headers(VALID_FRAMES), hostile_frames(VALID_FRAMES))


# --- target 3: one end of a connection, fed messages in any order ---------------------

_HANDSHAKE = (
    (V, lambda: _sample(Hello)),
    (C, lambda: Challenge(pool_public_key=b"\x02" * 32, pool_name="p", nonce=b"\x03" * 32, pool_signature=b"\x04" * 64)),
    (V, lambda: Auth(signature=b"\x05" * 64)),
    (C, lambda: Accepted(node_id="bf1node", heartbeat_interval_s=5.0)),
)
_START_STEPS: dict[str, tuple[tuple[Role, Callable[[], Message]], ...]] = {
    "fresh": (),
    "authenticated": _HANDSHAKE,
    "assigned": (*_HANDSHAKE, (C, lambda: dataclasses.replace(_sample(Assign), assignment_id="a1"))),
    "serving": (*_HANDSHAKE, (C, lambda: dataclasses.replace(_sample(Assign), assignment_id="a1")),
                (V, lambda: Ready(assignment_id="a1", load_seconds=1.0))),
    "draining": (*_HANDSHAKE, (C, lambda: dataclasses.replace(_sample(Assign), assignment_id="a1")),
                 (V, lambda: Ready(assignment_id="a1", load_seconds=1.0)), (V, lambda: Drain(reason="leaving"))),
}


def _sample(cls: type[_M]) -> _M:
    return next(m for m in _SAMPLES if isinstance(m, cls))


def started(role: Role, start: str) -> ProtocolConnection:
    """A connection end brought to ``start`` by legal traffic."""
    conn = ProtocolConnection(role)
    for sender, make in _START_STEPS[start]:
        msg = make()
        if sender is role:
            conn.send(msg)
        else:
            conn.receive(msg.to_frame())
    conn.data_to_send(), conn.events()
    return conn


@dataclass(frozen=True, slots=True)
class Step:
    """One move in a script: the peer's frame arrives (``receive``) or we ``send`` a message."""

    action: str
    msg: Message | None = None
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Script:
    """A connection end in a starting state, then a sequence of steps."""

    role: Role
    start: str
    steps: tuple[Step, ...]


def _received(msg: Message) -> Step:
    return Step("receive", msg, msg.to_frame())


def scripts(role: Role) -> st.SearchStrategy[Script]:
    """Scripts for one end: mostly what the peer may send (so that the conversation gets
    somewhere before a violation ends it), also anything at all, our own sends, and junk."""
    from_peer = valid_messages(role.peer).map(_received)
    steps = choose(
        from_peer, from_peer, from_peer, from_peer,
        VALID_MESSAGES.map(_received),
        valid_messages(role).map(lambda m: Step("send", m)),
        VALID_MESSAGES.map(lambda m: Step("send", m)),
        hostile_frames(VALID_FRAMES).map(lambda data: Step("receive", None, data)),
    )
    return st.builds(Script, st.just(role), st.sampled_from(sorted(_START_STEPS)), st.lists(steps, max_size=14).map(tuple))


def _snapshot(conn: ProtocolConnection) -> dict[str, Any]:
    return {k: copy.copy(v) for k, v in vars(conn).items() if k not in ("_events", "_outgoing")}


def check_consistent(conn: ProtocolConnection) -> None:
    """Invariants of any reachable state of a connection end."""
    ready, active, assigned = conn._ready, conn._active, conn._assigned  # noqa: SLF001 - white-box invariants
    expect(ready <= active <= assigned, "ready/active/assigned sets are not nested")
    expect(len(assigned) <= MAX_ASSIGNMENTS and len(conn._fetches) <= MAX_PENDING_FETCHES  # noqa: SLF001
           and len(conn._steps) <= MAX_OUTSTANDING_STEPS, "a bounded table overflowed")  # noqa: SLF001
    expect((conn.state is State.CLOSED) == (conn.close_code is not None), "closed without a close code")


def run_script(script: Script) -> Measured:
    """Play ``script``; every step must be accepted or refused by the rules, the end stay consistent."""
    conn = started(script.role, script.start)
    peak, accepted = 0, 0
    for step in script.steps:
        before = _snapshot(conn)
        was_closed = conn.state is State.CLOSED
        if step.action == "send":
            assert step.msg is not None
            outcome = measured(conn.send, step.msg)
            sent = conn.data_to_send()
            if outcome.error is None:
                expect(len(sent) == 1 and same(decode_message(sent[0]), step.msg), "a send queued the wrong frames")
            else:
                expect(isinstance(outcome.error, ProtocolViolation) and not sent and _snapshot(conn) == before,
                       f"a refused send changed the connection: {outcome.error!r}")
        else:
            outcome = measured(conn.receive, step.data)
            expect(outcome.peak_bytes <= allocation_allowance(step.data) + ALLOCATION_SLACK,
                   f"receiving {len(step.data)} bytes allocated {outcome.peak_bytes} bytes")
            events, sent = conn.events(), conn.data_to_send()
            if was_closed:
                expect(outcome.error is None and not events and not sent, "a closed connection reacted to data")
            elif outcome.error is None:
                expect(len(events) == 1 and not sent, "an accepted frame did not become exactly one event")
                if step.msg is not None:
                    expect(same(events[0], step.msg), "a received message changed on the way")
            else:
                expect(isinstance(outcome.error, ProtocolViolation), f"receive raised {outcome.error!r}")
                expect(conn.state is State.CLOSED and not events and len(sent) == 1
                       and isinstance(decode_message(sent[0]), Error), "a violation did not close with an Error")
        check_consistent(conn)
        peak = max(peak, outcome.peak_bytes)
        accepted += outcome.error is None and not was_closed
    return Measured(_count_label(accepted, "accepted"), peak)


def _count_label(count: int, what: str) -> str:
    return f"{count} {what}" if count < 4 else f"4+ {what}"


# --- target 4: both ends back to back -------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairScript:
    """Both ends brought to ``start``, then messages each sent by one end and delivered at once."""

    start: str
    moves: tuple[tuple[Role, Message], ...]


PAIR_SCRIPTS = st.builds(
    PairScript,
    st.sampled_from(sorted(_START_STEPS)),
    st.lists(st.tuples(st.sampled_from([C, V]), VALID_MESSAGES), max_size=16).map(tuple),
)


def run_pair(script: PairScript) -> Measured:
    """What one end may legally send, the other must accept; a refused send changes nothing."""
    ends = {C: started(C, script.start), V: started(V, script.start)}
    peak, accepted = 0, 0
    for role, msg in script.moves:
        sender, receiver = ends[role], ends[role.peer]
        before = _snapshot(sender)
        outcome = measured(sender.send, msg)
        frames = sender.data_to_send()
        if outcome.error is not None:
            expect(isinstance(outcome.error, ProtocolViolation) and not frames and _snapshot(sender) == before,
                   f"a refused send changed the connection: {outcome.error!r}")
            continue
        expect(len(frames) == 1, "one send, one frame")
        delivered = measured(receiver.receive, frames[0])
        expect(delivered.error is None, f"{role.peer.value} refused what the {role.value} legally sent: "
                                        f"{msg.KIND}: {delivered.error!r}")
        (event,) = receiver.events()
        expect(same(event, msg), "a delivered message changed on the way")
        expect(sender.state is receiver.state, f"ends disagree: {sender.state} vs {receiver.state} after {msg.KIND}")
        for end in ends.values():
            check_consistent(end)
        peak, accepted = max(peak, outcome.peak_bytes, delivered.peak_bytes), accepted + 1
    return Measured(_count_label(accepted, "delivered"), peak)


# --- the targets, shared with scripts/bench_fuzz.py ------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One fuzz target: what to generate and how to check it (raises on a broken property)."""

    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], Measured]
    size: Callable[[Any], int]
    """Bytes of an input, for reporting allocation relative to input size."""


def _script_bytes(script: Script) -> int:
    return sum(len(s.data) if s.action == "receive" else 0 for s in script.steps)


TARGETS: dict[str, Target] = {
    "frame_decoder": Target(FRAME_INPUTS, lambda args: check_frame(*args), lambda args: len(args[0])),
    "message_parser": Target(MESSAGE_INPUTS, check_message, len),
    "session_coordinator": Target(scripts(C), run_script, _script_bytes),
    "session_volunteer": Target(scripts(V), run_script, _script_bytes),
    "session_pair": Target(PAIR_SCRIPTS, run_pair, lambda s: sum(len(m.to_frame()) for _, m in s.moves)),
}

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
BUDGET: dict[str, int] = {
    "frame_decoder": 600, "message_parser": 600, "session_coordinator": 300, "session_volunteer": 300,
    "session_pair": 300,
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str) -> None:
    target = TARGETS[name]

    @settings(FUZZ, max_examples=BUDGET[name])
    @given(target.strategy)
    def run(example: Any) -> None:
        target.check(example)

    run()


def test_generators_reach_every_outcome() -> None:
    """A guard for the targets above: they reach acceptance and every kind of refusal, deep down."""
    labels: dict[str, set[str]] = {name: set() for name in TARGETS}
    texts: set[str] = set()

    def collect(name: str, examples: int) -> None:
        @settings(FUZZ, max_examples=examples, derandomize=True, phases=[Phase.generate])
        @given(TARGETS[name].strategy)
        def run(example: Any) -> None:
            outcome = TARGETS[name].check(example)
            labels[name].add(outcome.label)
            if outcome.error is not None:
                texts.add(outcome.error.message.split(":")[0])

        run()

    collect("frame_decoder", 600)
    collect("message_parser", 250)
    collect("session_volunteer", 100)
    collect("session_pair", 100)
    assert {"accepted", "ProtocolViolation", "FrameTooLarge", "VersionMismatch"} <= labels["frame_decoder"]
    assert {"accepted", "ProtocolViolation"} <= labels["message_parser"]
    assert {"3 accepted", "4+ accepted"} & labels["session_volunteer"], labels["session_volunteer"]
    assert "4+ delivered" in labels["session_pair"], labels["session_pair"]
    reached = {kind for kind in message_kinds() if f"{kind} message" in texts}
    assert len(reached) >= len(message_kinds()) // 2, f"message-level refusals reached only {sorted(reached)}"


# --- regressions: inputs that once escaped as something other than a ButterflyError ----


def header_frame(text: str, body: bytes = b"") -> bytes:
    return raw_frame(text.encode("utf-8"), body)


@pytest.mark.parametrize(
    "text",
    [
        '{"kind":"heartbeat","seq":1,"sent_at":' + "9" * 400 + ',"tensors":[]}',  # int too large for a float
        '{"kind":"heartbeat_ack","seq":1,"sent_at":-' + "1" * 310 + ',"tensors":[]}',
        '{"kind":"set_slowdown","factor":' + "1" * 320 + ',"tensors":[]}',
    ],
)
def test_integers_too_large_for_a_float_field_are_refused(text: str) -> None:
    with pytest.raises(ProtocolViolation, match="must be a finite number"):
        decode_message(header_frame(text))


@pytest.mark.parametrize("number", ["1e999", "-1e999", "2e308", "1E+400"])
def test_numbers_that_overflow_to_infinity_are_refused_in_headers(number: str) -> None:
    with pytest.raises(ProtocolViolation, match="not valid JSON"):
        decode_frame(header_frame('{"kind":"k","x":' + number + ',"tensors":[]}'))
    with pytest.raises(ProtocolViolation):
        decode_message(header_frame('{"kind":"heartbeat","seq":1,"sent_at":' + number + ',"tensors":[]}'))


def test_every_accepted_header_number_is_finite() -> None:
    frame = decode_frame(header_frame('{"kind":"k","x":[1.7976931348623157e308,-0.0,5e-324,1e-400],"tensors":[]}'))
    assert all(math.isfinite(v) for v in frame.header["x"])


def test_a_header_as_wide_as_the_limit_costs_a_bounded_amount_of_memory() -> None:
    """The worst JSON for memory (empty containers) at the full 1 MiB header limit."""
    limits = Limits()
    filler = ",".join(["{}"] * ((limits.max_header_bytes - 64) // 3))
    data = header_frame('{"kind":"k","x":[' + filler + '],"tensors":[]}')
    outcome = measured(decode_frame, data, limits)
    assert outcome.label == "accepted"
    assert outcome.peak_bytes <= allocation_allowance(data)
    assert outcome.peak_bytes <= 32 * limits.max_header_bytes


def test_the_allowance_never_trusts_a_declared_header_length() -> None:
    data = raw_frame(b"{}", declared=2**20 - 1)
    assert allocation_allowance(data) == BODY_EXPANSION * len(data) + HEADER_EXPANSION * 2 + ALLOCATION_SLACK
    assert check_frame(data).label == "ProtocolViolation"
    assert check_frame(raw_frame(b"{}", declared=2**32 - 1)).label == "FrameTooLarge"


def test_measured_lets_crashes_through() -> None:
    def boom() -> None:
        raise KeyError("not a ButterflyError")

    with pytest.raises(KeyError):
        measured(boom)
    assert measured(lambda: (_ for _ in ()).throw(FrameTooLarge("x"))).label == "FrameTooLarge"
    assert isinstance(measured(Heartbeat, 1, 1.0).value, Heartbeat)


def test_every_message_kind_has_a_fuzz_sample() -> None:
    """The state-machine targets draw from the samples: a new kind needs one there."""
    assert {m.KIND for m in _SAMPLES} == set(message_kinds())
