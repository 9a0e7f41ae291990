"""The one exception tree of Butterfly.

Every error the product raises on purpose is a :class:`ButterflyError`. Each class
says what went wrong *and* carries a hint on how to fix it; the edges (websocket
close codes, HTTP statuses, CLI exit codes) map these classes and nothing else.

Close codes follow RFC 6455: 1008 (policy violation) for protocol and auth failures,
1009 (message too big) for size limits, 1011 (internal error) for our own faults,
4000-4999 for Butterfly-specific reasons.
"""

from __future__ import annotations


class ButterflyError(Exception):
    """Base of every deliberate Butterfly error.

    ``hint`` tells the user how to fix it; ``close_code`` is the websocket close
    code used when the error ends a connection.
    """

    close_code: int = 1011
    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(ButterflyError):
    """A setting, flag or file given by the user is invalid."""

    http_status = 400


class ProtocolViolation(ButterflyError):
    """A peer sent bytes or messages that break the wire protocol."""

    close_code = 1008
    http_status = 400


class FrameTooLarge(ProtocolViolation):
    """A frame, header or tensor exceeded a negotiated bound."""

    close_code = 1009


class VersionMismatch(ProtocolViolation):
    """The peer speaks a protocol version we do not."""

    close_code = 4001


class AuthFailed(ButterflyError):
    """Identity or admission failed: bad signature, forged/expired/revoked invite."""

    close_code = 4003
    http_status = 401


class ShardLoadFailed(ButterflyError):
    """A shard's tensors could not be fetched, verified or loaded."""

    close_code = 4004


class ModelFormatError(ButterflyError):
    """A model file or directory is malformed or uses an unsupported architecture."""

    http_status = 400


class StoreError(ButterflyError):
    """The local model store could not read or write (missing model, full disk, …)."""


class PoolUnavailable(ButterflyError):
    """The pool cannot serve right now (no volunteers, not enough memory, shutting down)."""

    close_code = 1013
    http_status = 503


class InsufficientCapacity(PoolUnavailable):
    """The volunteers together cannot hold the model; says how much memory is missing."""

    def __init__(self, message: str, *, missing_bytes: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.missing_bytes = missing_bytes


class StageFailed(ButterflyError):
    """A pipeline stage failed, stalled or disconnected while serving a step.

    ``node_id`` names the volunteer that failed, when known.
    """

    close_code = 4005

    def __init__(self, message: str, *, hint: str | None = None, node_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.node_id = node_id


class RequestFailed(ButterflyError):
    """A generation request could not be completed (after any recovery attempts)."""

    http_status = 500
