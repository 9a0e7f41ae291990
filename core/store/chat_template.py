"""Rendering a model's Jinja chat template the way Hugging Face ``transformers`` does.

Chat templates ship with models, so they are untrusted code: they run in Jinja's
immutable sandbox with the same extras ``transformers`` offers (``raise_exception``,
``strftime_now``, a ``tojson`` that does not HTML-escape, loop controls, and
``trim_blocks``/``lstrip_blocks``), so templates written for it render identically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import ConfigError, ModelFormatError


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _SafeNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace()`` refusing underscore-prefixed attributes, which could reach interpreter internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates may not set attribute {name!r} on a namespace")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts ``{% generation %}...{% endgeneration %}`` (used to mark assistant text) and renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


def _plain(value: Any) -> Any:
    """A copy of ``value`` made only of JSON types, so a template sees no methods of rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return f"<{type(value).__name__}>"


class ChatTemplate:
    """A compiled, sandboxed chat template.

    ``render`` promises the same text as ``transformers``' ``apply_chat_template(...,
    tokenize=False)`` given the same messages and special tokens. ``now`` supplies the
    time ``strftime_now`` formats.
    """

    def __init__(self, source: str, *, now: Callable[[], datetime] = datetime.now) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: now().strftime(fmt)
        env.globals["namespace"] = _SafeNamespace
        env.globals["dict"] = lambda *args, **kwargs: dict(*args, **kwargs)
        try:
            self._template = env.from_string(source)
        except jinja2.exceptions.TemplateError as exc:
            raise ModelFormatError(f"the model's chat template does not compile: {exc}") from exc
        self.source = source

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool, variables: Mapping[str, Any]
    ) -> str:
        """Render ``messages``; ``variables`` (special tokens and the like) are visible to the template.

        Raises :class:`ConfigError` when the template rejects the conversation.
        """
        context = {k: _plain(v) for k, v in variables.items()}
        try:
            return self._template.render(
                **context,
                messages=_plain(list(messages)),
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
            )
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as exc:
            raise ConfigError(
                f"the chat template rejected the conversation: {exc}",
                hint="check message roles and their order (e.g. alternating user/assistant)",
            ) from exc
