"""OpenAI's request and response shapes, as pure functions: JSON in, checked values out, and back.

Parsing accepts what OpenAI's chat and completions endpoints accept and this pool can honour
(``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``stop``, ``seed``,
``stream`` with ``stream_options.include_usage``; ``top_k`` as an extension). Anything it
cannot honour (``n > 1``, tools, log probabilities, penalties) is refused with a clear
:class:`~server.api.errors.InvalidRequest` naming the parameter, never silently ignored.
Fields with no effect on the answer (``user``, ``metadata``, ``store``) are ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import ConfigError
from server.api.errors import InvalidRequest, ModelNotFound
from server.sampling import MAX_STOP_STRINGS, SamplingParams

MAX_MESSAGES = 512
MAX_TEMPERATURE = 2.0
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked ``POST /v1/chat/completions`` body; ``messages`` are plain ``{role, content}`` strings."""

    model: str
    messages: tuple[Mapping[str, str], ...]
    params: SamplingParams
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class TextRequest:
    """A checked ``POST /v1/completions`` body; ``prompt`` is text or token ids."""

    model: str
    prompt: str | tuple[int, ...]
    params: SamplingParams
    stream: bool
    include_usage: bool


# --- parsing ---------------------------------------------------------------------------


def parse_chat_request(body: object, *, model_name: str, default_max_tokens: int) -> ChatRequest:
    """Check a chat completions body; raises :class:`InvalidRequest` or :class:`ModelNotFound`."""
    body = _object(body)
    model = _model(body, model_name)
    _refuse_unsupported(body, chat=True)
    messages = _messages(body.get("messages"))
    stream, include_usage = _stream(body)
    params = _sampling(body, default_max_tokens=default_max_tokens)
    return ChatRequest(model, messages, params, stream, include_usage)


def parse_text_request(body: object, *, model_name: str, vocab_size: int, default_max_tokens: int) -> TextRequest:
    """Check a (legacy) completions body; raises :class:`InvalidRequest` or :class:`ModelNotFound`."""
    body = _object(body)
    model = _model(body, model_name)
    _refuse_unsupported(body, chat=False)
    prompt = _prompt(body.get("prompt"), vocab_size)
    stream, include_usage = _stream(body)
    params = _sampling(body, default_max_tokens=default_max_tokens)
    return TextRequest(model, prompt, params, stream, include_usage)


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _model(body: Mapping[str, Any], model_name: str) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model", hint=f"this pool serves {model_name!r}")
    if not isinstance(model, str):
        raise InvalidRequest("model must be a string", param="model")
    if model != model_name:
        raise ModelNotFound(
            f"the model {model!r} does not exist on this pool", hint=f"this pool serves {model_name!r}; see GET /v1/models"
        )
    return model


def _refuse_unsupported(body: Mapping[str, Any], *, chat: bool) -> None:
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise InvalidRequest(f"n must be 1 on this pool, got {n!r}", param="n", hint="send one request per choice")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or value != 0):
            raise InvalidRequest(f"{name} is not supported (only 0)", param=name)
    if body.get("logit_bias"):
        raise InvalidRequest("logit_bias is not supported", param="logit_bias")
    if chat:
        if body.get("logprobs") or body.get("top_logprobs"):
            raise InvalidRequest("log probabilities are not supported", param="logprobs")
        for name in ("tools", "functions"):
            if body.get(name):
                raise InvalidRequest(f"{name} are not supported by this pool", param=name)
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise InvalidRequest("only response_format {\"type\": \"text\"} is supported", param="response_format")
    else:
        if body.get("logprobs") is not None:
            raise InvalidRequest("log probabilities are not supported", param="logprobs")
        if body.get("echo"):
            raise InvalidRequest("echo is not supported", param="echo")
        if body.get("suffix"):
            raise InvalidRequest("suffix is not supported", param="suffix")
        best_of = body.get("best_of")
        if best_of is not None and best_of != 1:
            raise InvalidRequest("best_of must be 1 on this pool", param="best_of")


def _messages(value: object) -> tuple[Mapping[str, str], ...]:
    if value is None:
        raise InvalidRequest("you must provide a messages parameter", param="messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"at most {MAX_MESSAGES} messages per request", param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object with role and content", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}", param=f"{where}.role"
            )
        out.append({"role": ROLES[role], "content": _content(message.get("content"), role=role, where=where)})
    return tuple(out)


def _content(value: object, *, role: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"{where}.content[{j}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                    "this model reads text only",
                    param=f"{where}.content",
                )
            parts.append(part["text"])
        return "\n".join(parts)
    raise InvalidRequest(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def _prompt(value: object, vocab_size: int) -> str | tuple[int, ...]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return value
    if isinstance(value, list) and value and all(_is_int(t) for t in value):
        if any(not 0 <= t < vocab_size for t in value):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab_size})", param="prompt")
        return tuple(value)
    if value is None:
        raise InvalidRequest("you must provide a prompt parameter", param="prompt")
    raise InvalidRequest(
        "prompt must be a string or a list of token ids (one prompt per request)", param="prompt"
    )


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidRequest("stream_options.include_usage must be a boolean", param="stream_options.include_usage")
    return stream, include


def _sampling(body: Mapping[str, Any], *, default_max_tokens: int) -> SamplingParams:
    temperature = _number(body, "temperature", default=1.0, low=0.0, high=MAX_TEMPERATURE)
    top_p = _number(body, "top_p", default=1.0, low=0.0, high=1.0)
    top_k = body.get("top_k")
    if top_k is None or top_k == -1:
        top_k = 0
    if not _is_int(top_k) or top_k < 0:
        raise InvalidRequest(f"top_k must be a non-negative integer, got {top_k!r}", param="top_k")
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(max_name)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not _is_int(max_tokens) or max_tokens < 1:
        raise InvalidRequest(f"{max_name} must be a positive integer, got {max_tokens!r}", param=max_name)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise InvalidRequest(f"seed must be an integer, got {seed!r}", param="seed")
    stop = _stop(body.get("stop"))
    try:
        return SamplingParams(
            max_tokens=min(max_tokens, default_max_tokens),
            temperature=float(temperature),
            top_k=int(top_k),
            # top_p == 0 means "only the most likely token"; the sampler's filter always keeps that one.
            top_p=float(top_p) if top_p > 0 else 1e-9,
            seed=None if seed is None else seed % 2**63,
            stop=stop,
        )
    except ConfigError as exc:
        raise InvalidRequest(exc.message) from exc


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise InvalidRequest("stop must be a non-empty string or a list of them", param="stop")
    if len(value) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"stop takes at most {MAX_STOP_STRINGS} strings", param="stop")
    return tuple(value)


def _number(body: Mapping[str, Any], name: str, *, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a number between {low:g} and {high:g}, got {value!r}", param=name)
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# --- responses -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """The fields every object of one response shares: id, creation time, model and fingerprint."""

    id: str
    created: int
    model: str
    system_fingerprint: str

    @classmethod
    def new(cls, kind: Literal["chat", "text"], *, model: str, fingerprint: str, now: float | None = None) -> Envelope:
        """A fresh envelope; ids look like OpenAI's (``chatcmpl-…``, ``cmpl-…``)."""
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        created = int(time.time() if now is None else now)
        return cls(prefix + uuid.uuid4().hex[:24], created, model, fingerprint)

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
        }


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(env: Envelope, *, text: str, finish_reason: str, usage: Mapping[str, int]) -> dict[str, Any]:
    """A whole ``chat.completion`` object with one choice."""
    return {
        **env._head("chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": dict(usage),
    }


def chat_chunk(
    env: Envelope, *, delta: Mapping[str, str], finish_reason: str | None = None, include_usage: bool = False
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``include_usage`` it carries ``"usage": null`` as OpenAI's do."""
    chunk = {
        **env._head("chat.completion.chunk"),
        "choices": [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def text_completion(env: Envelope, *, text: str, finish_reason: str | None, usage: Mapping[str, int] | None) -> dict[str, Any]:
    """A ``text_completion`` object, whole (with usage) or as a streamed chunk (``usage`` None)."""
    body = {
        **env._head("text_completion"),
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    return body


def usage_chunk(env: Envelope, *, chat: bool, usage: Mapping[str, int]) -> dict[str, Any]:
    """The last streamed chunk when ``include_usage`` is set: no choices, only usage."""
    return {**env._head("chat.completion.chunk" if chat else "text_completion"), "choices": [], "usage": dict(usage)}


def model_list(model: str, *, created: int, owner: str) -> dict[str, Any]:
    """``GET /v1/models``: the one model this pool serves."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": owner}]}


def sse_event(data: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"
