"""The typed messages of the wire protocol, one frozen dataclass each.

Every message validates its own fields when constructed, so a message that exists is
a legal one: strings are bounded, counts are non-negative integers, floats are finite
and in range, keys and signatures have their exact lengths. A violation raises
:class:`ProtocolViolation` naming the message and the field. ``to_frame()`` encodes a
message into one frame; ``from_frame()`` (or :func:`parse_message`) decodes one,
refusing missing, extra and mistyped fields.

Fields are declared with ``Annotated[type, codec]``; the codec says how the field is
checked and how it travels in the JSON header (bytes as base64, layer ranges as
``[start, end, total]``, ...). Tensor fields travel as frame tensors. A field marked
``ELIDED`` (a later addition with a default) is left out of the frame while it holds its
default and reads as the default when absent, so older peers keep understanding us.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, NoReturn, Self

import torch

from core import errors
from core.errors import ButterflyError, ProtocolViolation
from core.protocol.codec import CODECS, check_payload
from core.protocol.frames import Frame, Limits, decode_frame, encode_frame
from core.protocol.top_logits import MAX_LOGITS_TOP
from core.types import HardwareProfile, LayerRange, NodeId

MAX_CHUNK_BYTES: int = 8 * 2**20
"""The largest weight chunk one FetchTensor may ask for and one TensorChunk may carry."""
MAX_TENSOR_SPECS: int = 4096
"""The most tensors one Assign may list."""
MAX_CONFIG_BYTES: int = 32 * 2**10
"""The largest model config (as compact JSON) one Assign may carry."""
MAX_BYTE_COUNT: int = 2**50
"""Upper bound of any byte count or offset (1 PiB)."""
MAX_INT: int = 2**63 - 1

_HINT = "the peer runs an incompatible or faulty Butterfly; update both sides to the same release"


def _fail(kind: str, path: str, problem: str) -> NoReturn:
    raise ProtocolViolation(f"{kind} message: {path} {problem}", hint=_HINT)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- field codecs ----------------------------------------------------------------------


class _Codec:
    """How one header field is checked (``check``) and carried in JSON (``to_json``/``from_json``).

    ``check`` returns the value, normalized (e.g. a list made a tuple); ``from_json``
    only converts JSON shapes to Python values, leaving the checking to ``check``.
    """

    __slots__ = ()
    wire_name: ClassVar[str | None] = None
    """The field's key in the header, when it differs from the attribute name."""

    def check(self, kind: str, path: str, value: Any) -> Any:
        raise NotImplementedError

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, kind: str, path: str, raw: Any) -> Any:
        return raw


class _Text(_Codec):
    __slots__ = ("max_chars", "min_chars", "optional")

    def __init__(self, max_chars: int, *, min_chars: int = 0, optional: bool = False) -> None:
        self.max_chars, self.min_chars, self.optional = max_chars, min_chars, optional

    def check(self, kind: str, path: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not self.min_chars <= len(value) <= self.max_chars:
            _fail(kind, path, f"must be a string of {self.min_chars} to {self.max_chars} characters"
                  f"{' or null' if self.optional else ''}, got {_short(value)}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                _fail(kind, path, "contains characters that are not valid Unicode (lone surrogates)")
        return value


class _Choice(_Codec):
    __slots__ = ("choices",)

    def __init__(self, *choices: str) -> None:
        self.choices = frozenset(choices)

    def check(self, kind: str, path: str, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.choices:
            _fail(kind, path, f"must be one of {', '.join(sorted(self.choices))}, got {_short(value)}")
        return value


class _Flag(_Codec):
    """A JSON boolean (``true``/``false``; integers are refused)."""

    __slots__ = ()

    def check(self, kind: str, path: str, value: Any) -> Any:
        if type(value) is not bool:
            _fail(kind, path, f"must be true or false, got {_short(value)}")
        return value


class _Int(_Codec):
    __slots__ = ("lo", "hi", "optional")

    def __init__(self, lo: int = 0, hi: int = MAX_INT, *, optional: bool = False) -> None:
        self.lo, self.hi, self.optional = lo, hi, optional

    def check(self, kind: str, path: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if type(value) is not int or not self.lo <= value <= self.hi:
            _fail(kind, path, f"must be an integer from {self.lo} to {self.hi}"
                  f"{' or null' if self.optional else ''}, got {_short(value)}")
        return value


_MAX_FLOAT_INT = int(sys.float_info.max)


class _Real(_Codec):
    """A finite float in ``[lo, hi]``; with ``inf_as_null``, +inf is allowed and travels as null."""

    __slots__ = ("lo", "hi", "inf_as_null")

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, *, inf_as_null: bool = False) -> None:
        self.lo, self.hi, self.inf_as_null = lo, hi, inf_as_null

    def check(self, kind: str, path: str, value: Any) -> Any:
        if type(value) is int:
            value = float(value) if abs(value) <= _MAX_FLOAT_INT else math.nan  # 1e400 as an integer: refused below
        if self.inf_as_null and value == math.inf:
            return value
        if type(value) is not float or not math.isfinite(value) or not self.lo <= value <= self.hi:
            _fail(kind, path, f"must be a finite number from {self.lo} to {self.hi}, got {_short(value)}")
        return value

    def to_json(self, value: Any) -> Any:
        return None if value == math.inf else value

    def from_json(self, kind: str, path: str, raw: Any) -> Any:
        return math.inf if raw is None and self.inf_as_null else raw


class _Raw(_Codec):
    """Exactly ``size`` bytes, carried as standard base64."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def check(self, kind: str, path: str, value: Any) -> Any:
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        if not isinstance(value, bytes) or len(value) != self.size:
            _fail(kind, path, f"must be exactly {self.size} bytes, got {_short(value)}")
        return value

    def to_json(self, value: Any) -> Any:
        return base64.b64encode(value).decode("ascii")

    def from_json(self, kind: str, path: str, raw: Any) -> Any:
        if not isinstance(raw, str) or len(raw) != 4 * math.ceil(self.size / 3):
            _fail(kind, path, f"must be {self.size} bytes as base64, got {_short(raw)}")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            _fail(kind, path, f"is not valid base64: {_short(raw)}")


class _Object(_Codec):
    """A nested frozen dataclass carried as a JSON object of its (scalar) fields."""

    __slots__ = ("cls", "fields")

    def __init__(self, cls: type, fields: Mapping[str, _Codec]) -> None:
        self.cls, self.fields = cls, dict(fields)

    def check(self, kind: str, path: str, value: Any) -> Any:
        if not isinstance(value, self.cls):
            _fail(kind, path, f"must be a {self.cls.__name__}, got {_short(value)}")
        changes = {}
        for name, codec in self.fields.items():
            old = getattr(value, name)
            new = codec.check(kind, f"{path}.{name}", old)
            if new is not old:
                changes[name] = new
        return dataclasses.replace(value, **changes) if changes else value

    def to_json(self, value: Any) -> Any:
        return {name: codec.to_json(getattr(value, name)) for name, codec in self.fields.items()}

    def from_json(self, kind: str, path: str, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.keys() != self.fields.keys():
            _fail(kind, path, f"must be an object with exactly the fields {', '.join(self.fields)}, "
                  f"got {_short(raw)}")
        return self.cls(**{n: c.from_json(kind, f"{path}.{n}", raw[n]) for n, c in self.fields.items()})


class _Layers(_Codec):
    """A :class:`LayerRange`, carried as ``[start, end, total]``."""

    __slots__ = ()

    def check(self, kind: str, path: str, value: Any) -> Any:
        if not isinstance(value, LayerRange) or any(
            type(v) is not int for v in (value.start, value.end, value.total)
        ) or value.total > 100_000:
            _fail(kind, path, f"must be a LayerRange of at most 100000 layers, got {_short(value)}")
        return value

    def to_json(self, value: Any) -> Any:
        return [value.start, value.end, value.total]

    def from_json(self, kind: str, path: str, raw: Any) -> Any:
        if not isinstance(raw, list) or len(raw) != 3 or any(type(v) is not int for v in raw):
            _fail(kind, path, f"must be [start, end, total] integers, got {_short(raw)}")
        try:
            return LayerRange(*raw)
        except ValueError as exc:
            _fail(kind, path, f"is not a valid layer range: {exc}")


class _Config(_Codec):
    """A JSON object (a model's config) of bounded size."""

    __slots__ = ()

    def check(self, kind: str, path: str, value: Any) -> Any:
        if not isinstance(value, dict):
            _fail(kind, path, f"must be a JSON object, got {_short(value)}")
        try:
            size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            _fail(kind, path, f"must be plain JSON: {exc}")
        if size > MAX_CONFIG_BYTES:
            _fail(kind, path, f"is {size} bytes of JSON, the limit is {MAX_CONFIG_BYTES}")
        return value


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One weight tensor of an assignment: what the volunteer fetches and checks.

    ``dtype`` is the storage type as the model file names it (``"F32"``, ``"BF16"``,
    GGUF types such as ``"Q4_1"``), ``nbytes`` the exact byte size and ``sha256`` the
    lowercase hex digest of those bytes.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    sha256: str


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class _Specs(_Codec):
    """A tuple of :class:`TensorSpec`, each carried as ``[name, dtype, shape, nbytes, sha256]``.

    Carried under the key ``tensor_specs``: ``tensors`` is the frame's own tensor list.
    """

    __slots__ = ()
    wire_name = "tensor_specs"
    _name = _Text(256, min_chars=1)
    _dtype = _Text(32, min_chars=1)
    _dim = _Int(0, MAX_BYTE_COUNT)
    _nbytes = _Int(0, MAX_BYTE_COUNT)

    def check(self, kind: str, path: str, value: Any) -> Any:
        if not isinstance(value, (tuple, list)) or len(value) > MAX_TENSOR_SPECS:
            _fail(kind, path, f"must be a tuple of at most {MAX_TENSOR_SPECS} TensorSpec, got {_short(value)}")
        names: set[str] = set()
        for i, spec in enumerate(value):
            where = f"{path}[{i}]"
            if not isinstance(spec, TensorSpec):
                _fail(kind, where, f"must be a TensorSpec, got {_short(spec)}")
            self._name.check(kind, f"{where}.name", spec.name)
            self._dtype.check(kind, f"{where}.dtype", spec.dtype)
            if not isinstance(spec.shape, tuple) or len(spec.shape) > 8:
                _fail(kind, f"{where}.shape", f"must be a tuple of at most 8 dimensions, got {_short(spec.shape)}")
            for dim in spec.shape:
                self._dim.check(kind, f"{where}.shape", dim)
            self._nbytes.check(kind, f"{where}.nbytes", spec.nbytes)
            if not isinstance(spec.sha256, str) or not _SHA256_HEX.fullmatch(spec.sha256):
                _fail(kind, f"{where}.sha256", f"must be 64 lowercase hex digits, got {_short(spec.sha256)}")
            if spec.name in names:
                _fail(kind, f"{where}.name", f"repeats tensor {spec.name!r}")
            names.add(spec.name)
        return tuple(value)

    def to_json(self, value: Any) -> Any:
        return [[s.name, s.dtype, list(s.shape), s.nbytes, s.sha256] for s in value]

    def from_json(self, kind: str, path: str, raw: Any) -> Any:
        if not isinstance(raw, list):
            _fail(kind, path, f"must be a list, got {_short(raw)}")
        specs = []
        for i, item in enumerate(raw):
            if not isinstance(item, list) or len(item) != 5 or not isinstance(item[2], list):
                _fail(kind, f"{path}[{i}]", f"must be [name, dtype, shape, nbytes, sha256], got {_short(item)}")
            specs.append(TensorSpec(item[0], item[1], tuple(item[2]), item[3], item[4]))
        return specs


class _Tensor:
    """A tensor field: allowed dtypes, rank range, an optional element bound; ``optional`` allows None."""

    __slots__ = ("dtypes", "min_ndim", "max_ndim", "max_numel", "optional")

    def __init__(self, *dtypes: torch.dtype, ndim: tuple[int, int], max_numel: int | None = None,
                 optional: bool = False) -> None:
        self.dtypes = frozenset(dtypes)
        self.min_ndim, self.max_ndim = ndim
        self.max_numel = max_numel
        self.optional = optional

    def check(self, kind: str, path: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, torch.Tensor):
            _fail(kind, path, f"must be a tensor, got {type(value).__name__}")
        if value.dtype not in self.dtypes:
            allowed = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.dtypes))
            _fail(kind, path, f"has dtype {str(value.dtype).removeprefix('torch.')}; allowed: {allowed}")
        if not self.min_ndim <= value.dim() <= self.max_ndim:
            _fail(kind, path, f"must have {self.min_ndim} to {self.max_ndim} dimensions, got shape "
                  f"{list(value.shape)}")
        if self.max_numel is not None and value.numel() > self.max_numel:
            _fail(kind, path, f"has {value.numel()} elements, the limit is {self.max_numel}")
        return value


Id = Annotated[str, _Text(128, min_chars=1)]
Name = Annotated[str, _Text(256)]
LongText = Annotated[str, _Text(4096)]
Count = Annotated[int, _Int()]
ByteCount = Annotated[int, _Int(0, MAX_BYTE_COUNT)]
Seconds = Annotated[float, _Real(0.0)]
Key = Annotated[bytes, _Raw(32)]
Nonce = Annotated[bytes, _Raw(32)]
Signature = Annotated[bytes, _Raw(64)]
_ACTIVATION = (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.int8)
Activation = Annotated[torch.Tensor, _Tensor(*_ACTIVATION, ndim=(1, 4))]


class _Elided:
    """Marks a field with a default that is left out of the frame while it holds that default.

    An absent key reads as the default, so peers that predate the field still understand
    each other as long as it keeps its default.
    """

    __slots__ = ()


ELIDED = _Elided()
Codec = Annotated[str, _Choice(*CODECS), ELIDED]
OptionalId = Annotated[str | None, _Text(128, min_chars=1, optional=True), ELIDED]
Scales = Annotated[torch.Tensor | None, _Tensor(torch.float32, ndim=(1, 4), optional=True), ELIDED]

_PROFILE = _Object(HardwareProfile, {
    "node_id": _Text(128),
    "device": _Text(32),
    "memory_bytes": _Int(0, MAX_BYTE_COUNT),
    "seconds_per_layer": _Real(0.0),
    "prefill_seconds_per_layer": _Real(0.0),
    "prefill_tokens": _Int(0, 2**31),
    "threads": _Int(0, 2**16),
    "rtt_s": _Real(0.0),
    "bandwidth_bytes_per_s": _Real(0.0, inf_as_null=True),
    "name": _Text(256),
    "os": _Text(256),
})


# --- the message base and registry ----------------------------------------------------


class Message:
    """Base of every protocol message; subclasses are frozen dataclasses with a ``KIND``."""

    __slots__ = ()
    KIND: ClassVar[str]
    _FIELDS: ClassVar[tuple[tuple[str, _Codec], ...]]
    _WIRE: ClassVar[tuple[tuple[str, str, _Codec], ...]]  # (attribute, header key, codec)
    _TENSORS: ClassVar[tuple[tuple[str, _Tensor], ...]]
    _CHECKS: ClassVar[tuple[tuple[str, _Codec | _Tensor], ...]]
    _ELIDED: ClassVar[Mapping[str, Any]]  # attribute -> the default it is left out at

    def __post_init__(self) -> None:
        for name, codec in self._CHECKS:
            value = getattr(self, name)
            checked = codec.check(self.KIND, name, value)
            if checked is not value:
                object.__setattr__(self, name, checked)
        self._check()

    def _check(self) -> None:
        """Cross-field rules of one message kind; fields are already valid one by one."""

    def to_frame(self) -> bytes:
        """Encode this message as one frame (bytes for one websocket binary message)."""
        header = {key: codec.to_json(getattr(self, name)) for name, key, codec in self._WIRE
                  if not self._at_default(name)}
        tensors = {name: getattr(self, name) for name, _ in self._TENSORS if not self._at_default(name)}
        return encode_frame(self.KIND, header, tensors)

    def _at_default(self, name: str) -> bool:
        if name not in self._ELIDED:
            return False
        value, default = getattr(self, name), self._ELIDED[name]
        return value is default or (not isinstance(value, torch.Tensor) and value == default)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        """Build this message from a decoded frame; every field must be present, valid and expected."""
        if frame.kind != cls.KIND:
            raise ProtocolViolation(f"expected a {cls.KIND} message, got {frame.kind!r}", hint=_HINT)
        elided = cls._ELIDED
        _exact_keys(cls.KIND, "field", frame.header.keys(), [key for _, key, _ in cls._WIRE],
                    optional=[key for name, key, _ in cls._WIRE if name in elided])
        _exact_keys(cls.KIND, "tensor", frame.tensors.keys(), [n for n, _ in cls._TENSORS],
                    optional=[n for n, _ in cls._TENSORS if n in elided])
        kwargs = {name: codec.from_json(cls.KIND, name, frame.header[key])
                  for name, key, codec in cls._WIRE if key in frame.header}
        kwargs.update((name, frame.tensors[name]) for name, _ in cls._TENSORS if name in frame.tensors)
        return cls(**kwargs)


def _exact_keys(kind: str, what: str, got: typing.KeysView[str], expected: list[str], *,
                optional: Sequence[str] = ()) -> None:
    if len(got) == len(expected) and got == set(expected):
        return
    missing = [k for k in expected if k not in got and k not in optional]
    extra = sorted(k for k in got if k not in expected)
    if missing:
        raise ProtocolViolation(f"{kind} message: missing {what} {missing[0]!r}", hint=_HINT)
    if not extra:
        return
    raise ProtocolViolation(f"{kind} message: unexpected {what} {_short(extra[0])}", hint=_HINT)


_REGISTRY: dict[str, type[Message]] = {}


_M = typing.TypeVar("_M", bound=type[Message])


def _message(cls: _M) -> _M:
    """Read the ``Annotated`` codecs of a message dataclass and register it by ``KIND``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[tuple[str, _Codec]] = []
    tensors: list[tuple[str, _Tensor]] = []
    for f in dataclasses.fields(cls):
        codec = hints[f.name].__metadata__[0]
        (tensors if isinstance(codec, _Tensor) else fields).append((f.name, codec))
    cls._FIELDS, cls._TENSORS = tuple(fields), tuple(tensors)
    cls._ELIDED = {f.name: f.default for f in dataclasses.fields(cls) if ELIDED in hints[f.name].__metadata__[1:]}
    cls._CHECKS = cls._FIELDS + cls._TENSORS
    cls._WIRE = tuple((name, codec.wire_name or name, codec) for name, codec in fields)
    if cls.KIND in _REGISTRY:
        raise TypeError(f"two messages share the kind {cls.KIND!r}")
    _REGISTRY[cls.KIND] = cls
    return cls


def parse_message(frame: Frame) -> Message:
    """Turn a decoded frame into its message; unknown kinds raise :class:`ProtocolViolation`."""
    cls = _REGISTRY.get(frame.kind)
    if cls is None:
        raise ProtocolViolation(f"unknown message kind {_short(frame.kind)}", hint=_HINT)
    return cls.from_frame(frame)


def decode_message(data: bytes | bytearray | memoryview, limits: Limits = Limits()) -> Message:
    """Decode one frame's bytes straight into its message (see :func:`decode_frame`)."""
    return parse_message(decode_frame(data, limits))


def message_kinds() -> Mapping[str, type[Message]]:
    """Every message class by its ``KIND``."""
    return dict(_REGISTRY)


# --- handshake ------------------------------------------------------------------------


@_message
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Volunteer -> coordinator, first: who I am, what I offer, my invite and a fresh nonce."""

    KIND: ClassVar[str] = "hello"
    protocol_version: Annotated[int, _Int(0, 2**16)]
    node_public_key: Key
    name: Name
    os: Name
    app_version: Annotated[str, _Text(64)]
    profile: Annotated[HardwareProfile, _PROFILE]
    invite: Annotated[str | None, _Text(4096, optional=True)]
    client_nonce: Nonce


@_message
@dataclass(frozen=True, slots=True)
class Challenge(Message):
    """Coordinator -> volunteer: the pool key, its signature over the client's nonce, our nonce."""

    KIND: ClassVar[str] = "challenge"
    pool_public_key: Key
    pool_name: Name
    nonce: Nonce
    pool_signature: Signature


@_message
@dataclass(frozen=True, slots=True)
class Auth(Message):
    """Volunteer -> coordinator: its signature over the coordinator's nonce."""

    KIND: ClassVar[str] = "auth"
    signature: Signature


@_message
@dataclass(frozen=True, slots=True)
class Accepted(Message):
    """Coordinator -> volunteer: admitted as ``node_id``; send heartbeats at this interval."""

    KIND: ClassVar[str] = "accepted"
    node_id: Annotated[NodeId, _Text(128, min_chars=1)]
    heartbeat_interval_s: Annotated[float, _Real(0.001, 3600.0)]


# --- loading a shard ------------------------------------------------------------------


@_message
@dataclass(frozen=True, slots=True)
class Assign(Message):
    """Coordinator -> volunteer: serve ``layers`` of a model; fetch and verify these tensors.

    ``dtype`` is the compute dtype; ``max_tokens`` the context length to budget the KV
    cache for. Several assignments may be live at once; each has its own id.
    ``signature`` is the pool key's signature over all the rest (see
    :mod:`core.protocol.signing`); a volunteer refuses an assignment it does not verify.
    """

    KIND: ClassVar[str] = "assign"
    assignment_id: Id
    model_id: Annotated[str, _Text(256, min_chars=1)]
    model_name: Name
    hf_config: Annotated[dict[str, Any], _Config()]
    layers: Annotated[LayerRange, _Layers()]
    dtype: Annotated[str, _Choice("float32", "bfloat16", "float16")]
    tensors: Annotated[tuple[TensorSpec, ...], _Specs()]
    max_tokens: Annotated[int, _Int(1, 2**24)]
    signature: Signature


@_message
@dataclass(frozen=True, slots=True)
class Unassign(Message):
    """Coordinator -> volunteer: drop an assignment (its layers and caches)."""

    KIND: ClassVar[str] = "unassign"
    assignment_id: Id


@_message
@dataclass(frozen=True, slots=True)
class FetchTensor(Message):
    """Volunteer -> coordinator: send bytes ``[offset, offset + length)`` of one assigned tensor."""

    KIND: ClassVar[str] = "fetch_tensor"
    assignment_id: Id
    name: Annotated[str, _Text(256, min_chars=1)]
    offset: ByteCount
    length: Annotated[int, _Int(1, MAX_CHUNK_BYTES)]


@_message
@dataclass(frozen=True, slots=True)
class TensorChunk(Message):
    """Coordinator -> volunteer: one chunk of a tensor's bytes, at ``offset`` of ``total``."""

    KIND: ClassVar[str] = "tensor_chunk"
    assignment_id: Id
    name: Annotated[str, _Text(256, min_chars=1)]
    offset: ByteCount
    total: ByteCount
    data: Annotated[torch.Tensor, _Tensor(torch.uint8, ndim=(1, 1), max_numel=MAX_CHUNK_BYTES)]

    def _check(self) -> None:
        if self.offset + self.data.numel() > self.total:
            _fail(self.KIND, "data", f"bytes [{self.offset}, {self.offset + self.data.numel()}) "
                  f"overrun the tensor's {self.total} bytes")


@_message
@dataclass(frozen=True, slots=True)
class LoadProgress(Message):
    """Volunteer -> coordinator: bytes of an assignment fetched and verified so far."""

    KIND: ClassVar[str] = "load_progress"
    assignment_id: Id
    done_bytes: ByteCount
    total_bytes: ByteCount

    def _check(self) -> None:
        if self.done_bytes > self.total_bytes:
            _fail(self.KIND, "done_bytes", f"({self.done_bytes}) exceeds total_bytes ({self.total_bytes})")


@_message
@dataclass(frozen=True, slots=True)
class Ready(Message):
    """Volunteer -> coordinator: the assignment is loaded and verified; send it work."""

    KIND: ClassVar[str] = "ready"
    assignment_id: Id
    load_seconds: Seconds


# --- serving --------------------------------------------------------------------------


@_message
@dataclass(frozen=True, slots=True)
class Forward(Message):
    """Coordinator -> volunteer: run one step of a session through an assignment's layers.

    ``x`` holds token ids (first stage) or hidden states at positions ``start_pos``
    onwards. A stage whose cache for the session is longer than ``start_pos`` first
    truncates it to ``start_pos`` (replay, recompute); a shorter cache is an error.
    ``codec`` (:mod:`core.protocol.codec`) is the link's activation codec: hidden states
    in ``x`` (with int8 ``scales``) travel in it, and so does the answer's hidden state;
    a last stage answers with logits in ``logits_codec``.

    Direct links (:mod:`app.peers`): with ``from_node`` set, ``x`` is empty and the input
    comes from that volunteer as a :class:`Handoff` naming this ``step_id`` (or from the
    coordinator as a :class:`Feed`, when the hand-off could not be made). With
    ``next_node`` set, the answer's hidden state is also handed to that volunteer, for
    its step ``next_step``, before the Result goes back.

    ``logits_top`` > 0 asks a last stage for only that many largest logits per row
    (:mod:`core.protocol.top_logits`): the Result's ``y`` holds the values and ``indices``
    their token ids.
    """

    KIND: ClassVar[str] = "forward"
    step_id: Count
    session_id: Id
    assignment_id: Id
    start_pos: Annotated[int, _Int(0, 2**31)]
    x: Activation
    codec: Codec = "model"
    scales: Scales = None
    logits_codec: Codec = "model"
    from_node: OptionalId = None
    next_node: OptionalId = None
    next_step: Annotated[int, _Int(), ELIDED] = 0
    logits_top: Annotated[int, _Int(0, MAX_LOGITS_TOP), ELIDED] = 0

    def _check(self) -> None:
        if self.from_node is not None:
            if self.x.numel() != 0 or self.scales is not None:
                _fail(self.KIND, "x", "must be empty when the input comes from from_node")
            return
        _check_activation(self.KIND, "x", self.codec, self.x, self.scales)

    @property
    def awaits_input(self) -> bool:
        """Whether ``x`` is a placeholder: the input arrives as a :class:`Handoff` from ``from_node`` or a :class:`Feed`."""
        return self.from_node is not None


@_message
@dataclass(frozen=True, slots=True)
class Result(Message):
    """Volunteer -> coordinator: the output of one step and the compute time it took.

    ``y`` travels in ``codec`` (with int8 ``scales``). ``batch`` is how many steps ran as
    one forward with this one; ``compute_s`` is then the whole batch's time. ``handed_off``:
    ``y`` also went straight to the next stage (the Forward's ``next_node``). ``indices``:
    ``y`` holds only the top logits the Forward asked for, and these are their token ids.
    """

    KIND: ClassVar[str] = "result"
    step_id: Count
    session_id: Id
    compute_s: Seconds
    y: Activation
    codec: Codec = "model"
    scales: Scales = None
    batch: Annotated[int, _Int(1, 2**16), ELIDED] = 1
    handed_off: Annotated[bool, _Flag(), ELIDED] = False
    indices: Annotated[torch.Tensor | None, _Tensor(torch.int32, ndim=(2, 2), optional=True), ELIDED] = None

    def _check(self) -> None:
        _check_activation(self.KIND, "y", self.codec, self.y, self.scales)
        if self.indices is not None and tuple(self.indices.shape) != tuple(self.y.shape):
            _fail(self.KIND, "indices", f"has shape {list(self.indices.shape)}; y has {list(self.y.shape)}")


@_message
@dataclass(frozen=True, slots=True)
class Feed(Message):
    """Coordinator -> volunteer: the input of outstanding step ``step_id``, whose Forward named a
    ``from_node`` that could not hand it over (the relay fallback of a direct link)."""

    KIND: ClassVar[str] = "feed"
    step_id: Count
    x: Activation
    codec: Codec = "model"
    scales: Scales = None

    def _check(self) -> None:
        _check_activation(self.KIND, "x", self.codec, self.x, self.scales)


# --- direct links between volunteers ---------------------------------------------------


@_message
@dataclass(frozen=True, slots=True)
class PeerChallenge(Message):
    """Listening volunteer -> dialing volunteer, first on a direct link: who I am and a fresh nonce."""

    KIND: ClassVar[str] = "peer_challenge"
    node_public_key: Key
    nonce: Nonce


@_message
@dataclass(frozen=True, slots=True)
class PeerAuth(Message):
    """Dialing volunteer -> listening volunteer: my key and my signature over your nonce
    (:func:`core.identity.peer_transcript`)."""

    KIND: ClassVar[str] = "peer_auth"
    node_public_key: Key
    signature: Signature


@_message
@dataclass(frozen=True, slots=True)
class Handoff(Message):
    """Dialing volunteer -> listening volunteer: a stage's output, the input of the listener's
    step ``step_id`` (the id the coordinator gave that step). It is used only if that step's
    Forward names the dialer as ``from_node`` and agrees on session and position."""

    KIND: ClassVar[str] = "handoff"
    step_id: Count
    session_id: Id
    start_pos: Annotated[int, _Int(0, 2**31)]
    x: Activation
    codec: Codec = "model"
    scales: Scales = None

    def _check(self) -> None:
        _check_activation(self.KIND, "x", self.codec, self.x, self.scales)


def _check_activation(kind: str, path: str, codec: str, data: torch.Tensor, scales: torch.Tensor | None) -> None:
    try:
        check_payload(codec, data, scales)
    except ProtocolViolation as exc:
        _fail(kind, path, f"does not fit its codec: {exc.message}")


@_message
@dataclass(frozen=True, slots=True)
class EndSession(Message):
    """Coordinator -> volunteer: the session is over; free its caches."""

    KIND: ClassVar[str] = "end_session"
    session_id: Id


# --- anytime after authentication -----------------------------------------------------


@_message
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Either way: are you there? ``sent_at`` is the sender's clock, echoed in the ack."""

    KIND: ClassVar[str] = "heartbeat"
    seq: Count
    sent_at: Annotated[float, _Real()]


@_message
@dataclass(frozen=True, slots=True)
class HeartbeatAck(Message):
    """Either way: the answer to a heartbeat, echoing its ``seq`` and ``sent_at``."""

    KIND: ClassVar[str] = "heartbeat_ack"
    seq: Count
    sent_at: Annotated[float, _Real()]


@_message
@dataclass(frozen=True, slots=True)
class SetSlowdown(Message):
    """Coordinator -> volunteer (debugging): multiply your compute time by ``factor``."""

    KIND: ClassVar[str] = "set_slowdown"
    factor: Annotated[float, _Real(1.0, 1000.0)]


@_message
@dataclass(frozen=True, slots=True)
class ModelInfo(Message):
    """Coordinator -> volunteer, after Accepted: the pool's model, so the volunteer can
    benchmark a real layer of it in the compute dtype before the pool plans."""

    KIND: ClassVar[str] = "model_info"
    model_id: Annotated[str, _Text(256, min_chars=1)]
    model_name: Name
    hf_config: Annotated[dict[str, Any], _Config()]
    dtype: Annotated[str, _Choice("float32", "bfloat16", "float16")]


@_message
@dataclass(frozen=True, slots=True)
class ProfileUpdate(Message):
    """Volunteer -> coordinator: what this machine offers, measured on the pool's model."""

    KIND: ClassVar[str] = "profile_update"
    profile: Annotated[HardwareProfile, _PROFILE]


MAX_PROBE_BYTES: int = 4 * 2**20
"""The largest payload one LinkProbe may carry."""


@_message
@dataclass(frozen=True, slots=True)
class LinkProbe(Message):
    """Coordinator -> volunteer: a payload to time the link's throughput (answered at once)."""

    KIND: ClassVar[str] = "link_probe"
    seq: Count
    sent_at: Annotated[float, _Real()]
    payload: Annotated[torch.Tensor, _Tensor(torch.uint8, ndim=(1, 1), max_numel=MAX_PROBE_BYTES)]


@_message
@dataclass(frozen=True, slots=True)
class LinkProbeAck(Message):
    """Volunteer -> coordinator: a probe arrived; echoes its ``seq`` and ``sent_at``."""

    KIND: ClassVar[str] = "link_probe_ack"
    seq: Count
    sent_at: Annotated[float, _Real()]
    received_bytes: ByteCount


@_message
@dataclass(frozen=True, slots=True)
class Drain(Message):
    """Either way: the sender is winding down; finish what is running, start nothing new."""

    KIND: ClassVar[str] = "drain"
    reason: LongText


_ERROR_CLASSES: Mapping[str, type[ButterflyError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ButterflyError) and cls is not errors.InsufficientCapacity
}


@_message
@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either way: something failed. ``code`` names a class of :mod:`core.errors`.

    With ``step_id`` it answers that Forward step only and the connection goes on;
    without, it is fatal and the sender closes the connection after it.
    """

    KIND: ClassVar[str] = "error"
    code: Annotated[str, _Text(64, min_chars=1)]
    message: LongText
    hint: Annotated[str | None, _Text(4096, optional=True)] = None
    step_id: Annotated[int | None, _Int(optional=True)] = None

    @classmethod
    def from_exception(cls, exc: ButterflyError, *, step_id: int | None = None) -> Error:
        """The message that reports ``exc`` to the peer (texts cut to their bounds)."""
        hint = exc.hint[:4096] if exc.hint is not None else None
        return cls(type(exc).__name__[:64], exc.message[:4096], hint, step_id)

    def to_exception(self) -> ButterflyError:
        """The error the peer reported, as the matching :mod:`core.errors` class."""
        error_cls = _ERROR_CLASSES.get(self.code, ButterflyError)
        if self.code == "InsufficientCapacity":
            error_cls = errors.PoolUnavailable
        return error_cls(f"peer reported: {self.message}", hint=self.hint)


@_message
@dataclass(frozen=True, slots=True)
class Bye(Message):
    """Either way: the sender is closing the connection on purpose."""

    KIND: ClassVar[str] = "bye"
    reason: LongText


__all__ = [
    "MAX_CHUNK_BYTES",
    "Accepted",
    "Assign",
    "Auth",
    "Bye",
    "Challenge",
    "Drain",
    "EndSession",
    "Error",
    "Feed",
    "FetchTensor",
    "Forward",
    "Handoff",
    "Heartbeat",
    "HeartbeatAck",
    "Hello",
    "LoadProgress",
    "Message",
    "PeerAuth",
    "PeerChallenge",
    "Ready",
    "Result",
    "SetSlowdown",
    "TensorChunk",
    "TensorSpec",
    "Unassign",
    "decode_message",
    "message_kinds",
    "parse_message",
]
