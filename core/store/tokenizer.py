"""The model's own tokenizer and chat template, without ``transformers``.

:class:`TextTokenizer` wraps a ``tokenizers.Tokenizer`` (``tokenizer.json``) and the
chat template and special tokens of ``tokenizer_config.json``. :class:`StreamDecoder`
turns a stream of token ids into text deltas for streaming responses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from core.errors import ModelFormatError
from core.store.chat_template import ChatTemplate

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class TextTokenizer:
    """Encodes and decodes text and renders chats for one model.

    ``eos_token_ids`` are every id that ends generation (the tokenizer's EOS first, then any
    further ids ``config.json``/``generation_config.json`` beside it name); ``bos_token_id``
    is ``None`` for models without one; ``vocab_size`` counts added tokens too.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        chat_template: str | None,
        special_tokens: Mapping[str, str],
        eos_token_ids: Sequence[int],
        bos_token_id: int | None,
    ) -> None:
        self._tokenizer = tokenizer
        self._chat_template = ChatTemplate(chat_template) if chat_template else None
        self._special_tokens = dict(special_tokens)
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.bos_token_id = bos_token_id
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, path: Path) -> TextTokenizer:
        """Load ``tokenizer.json`` and ``tokenizer_config.json`` (chat template, special tokens) from ``path``.

        ``config.json`` and ``generation_config.json``, when present, contribute extra EOS ids.
        Raises :class:`ModelFormatError` if ``tokenizer.json`` is missing or invalid.
        """
        tokenizer_path = path / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_str(tokenizer_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelFormatError(f"{path} has no tokenizer.json", hint="re-import the model") from exc
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ModelFormatError(f"{tokenizer_path} is not a valid tokenizer: {exc}") from exc
        config = _json_object(path / "tokenizer_config.json")
        special = {k: t for k in _SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k))) is not None}

        def token_id(key: str) -> int | None:
            text = special.get(key)
            return None if text is None else tokenizer.token_to_id(text)

        eos_ids = [i for i in (token_id("eos_token"),) if i is not None]
        for extra in (_json_object(path / "config.json"), _json_object(path / "generation_config.json")):
            eos_ids += _id_list(extra.get("eos_token_id"))
        bos_id = token_id("bos_token")
        if bos_id is None:
            bos_ids = _id_list(_json_object(path / "config.json").get("bos_token_id"))
            bos_id = bos_ids[0] if bos_ids else None
        return cls(
            tokenizer,
            chat_template=_template_text(config.get("chat_template")),
            special_tokens=special,
            eos_token_ids=eos_ids,
            bos_token_id=bos_id,
        )

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the tokenizer's BOS/EOS template is applied.

        Special-token text inside ``text`` (e.g. ``<|im_start|>``) maps to its special id.
        """
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 byte sequences decode to U+FFFD."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template."""
        return self._chat_template is not None

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (``{"role": ..., "content": ...}``), as the model's template renders it.

        Raises :class:`ModelFormatError` when the model has no chat template and
        :class:`~core.errors.ConfigError` when the template rejects the conversation.
        """
        if self._chat_template is None:
            raise ModelFormatError(
                "this model has no chat template", hint="use plain text completion or a model with a chat template"
            )
        return self._chat_template.render(
            messages, add_generation_prompt=add_generation_prompt, variables=self._special_tokens
        )

    def token_to_id(self, token: str) -> int | None:
        """The id of a token's text, or ``None`` if the vocabulary lacks it."""
        return self._tokenizer.token_to_id(token)

    def stream_decoder(self, *, skip_special_tokens: bool = True) -> StreamDecoder:
        """A fresh incremental decoder for one generated sequence."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text deltas.

    A delta never ends in half a UTF-8 character (text is held back while it would end
    in U+FFFD), and the deltas of every ``push`` plus ``flush`` concatenate to
    ``decode(all ids)``. Only a short window of recent ids is re-decoded per push.
    """

    def __init__(self, tokenizer: TextTokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token id; return the text it completes (possibly ``""``)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return any text still held back (an incomplete character decodes to U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        # Both texts are decoded from the same window start, so decoders that treat the first
        # token specially (e.g. stripping a leading space) affect them alike and cancel out.
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip)
        after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=self._skip)
        if not final and (len(after) <= len(before) or after.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return value


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, dict) else None
    return content if isinstance(content, str) else None


def _template_text(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        template = named.get("default")
        return template if isinstance(template, str) else None
    return None


def _id_list(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []
