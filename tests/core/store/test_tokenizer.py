"""TextTokenizer, its sandboxed chat template and the streaming decoder."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from core.errors import ConfigError, ModelFormatError
from core.store.chat_template import ChatTemplate
from core.store.tokenizer import TextTokenizer
from tests.core.store.builders import tiny_tokenizer

RICH_TEMPLATE = """{{ bos_token }}{% set ns = namespace(system='') %}
{%- for m in messages %}
  {%- if m['role'] == 'system' %}{% set ns.system = m['content'] | trim %}{% continue %}{% endif %}
  {%- if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
<{{ m['role'] }}>{{ m['content'] | tojson }}{% if loop.last %} [last]{% endif %}
{% endfor %}
{%- if ns.system %}(system: {{ ns.system }}){% endif %}
{%- if add_generation_prompt %}<assistant>{% generation %}{% endgeneration %}{% endif %}"""


@pytest.fixture(scope="module")
def base() -> Tokenizer:
    return tiny_tokenizer()


def write_dir(path: Path, tokenizer: Tokenizer, template: str | None, **config: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    tok_config: dict[str, object] = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}
    if template is not None:
        tok_config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    if config:
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory, base: Tokenizer) -> TextTokenizer:
    return TextTokenizer.from_dir(write_dir(tmp_path_factory.mktemp("tok"), base, RICH_TEMPLATE, eos_token_id=[2, 0]))


def test_special_ids_and_sizes(tok: TextTokenizer, base: Tokenizer) -> None:
    assert tok.eos_token_ids == (2, 0)
    assert tok.bos_token_id == 1
    assert tok.vocab_size == base.get_vocab_size()
    assert tok.encode("<|im_start|>hi") == base.encode("<|im_start|>hi").ids
    assert tok.decode(tok.encode("<|im_start|>hi")) == "hi"
    assert tok.decode(tok.encode("<|im_start|>hi"), skip_special_tokens=False) == "<|im_start|>hi"


def test_rich_template_matches_transformers(tmp_path: Path, base: Tokenizer, tok: TextTokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast(
        tokenizer_file=str(write_dir(tmp_path, base, None) / "tokenizer.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    reference.chat_template = RICH_TEMPLATE
    messages = [
        {"role": "system", "content": "  Be kind.  "},
        {"role": "user", "content": 'héllo "world" <b>&</b> 🦋'},
        {"role": "assistant", "content": "hi\nthere"},
    ]
    for add in (True, False):
        expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
        assert tok.apply_chat_template(messages, add_generation_prompt=add) == expected
    assert '"héllo \\"world\\" <b>&</b> 🦋"' in tok.apply_chat_template(messages)


def test_template_raise_exception_is_a_config_error(tok: TextTokenizer) -> None:
    with pytest.raises(ConfigError, match="bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{% set ns = namespace() %}{% set ns._secret = 1 %}",
        "{{ namespace(_x=1) }}",
        "{{ messages.append(1) }}",
    ],
)
def test_template_sandbox_blocks_escapes(source: str) -> None:
    with pytest.raises(ConfigError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}], add_generation_prompt=False, variables={})


def test_strftime_now_uses_the_given_clock() -> None:
    template = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}", now=lambda: datetime(2031, 2, 3))
    assert template.render([], add_generation_prompt=False, variables={}) == "2031-02-03"


def test_broken_or_missing_template(tmp_path: Path, base: Tokenizer) -> None:
    with pytest.raises(ModelFormatError, match="does not compile"):
        ChatTemplate("{% for x in %}")
    plain = TextTokenizer.from_dir(write_dir(tmp_path / "plain", base, None))
    assert not plain.has_chat_template
    with pytest.raises(ModelFormatError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        TextTokenizer.from_dir(tmp_path / "nothing-here")


def test_stream_decoder_holds_back_partial_characters(tok: TextTokenizer) -> None:
    ids = tok.encode("a🦋b")
    assert len(ids) >= 4  # the emoji is not in the tiny vocabulary: it arrives byte by byte
    decoder = tok.stream_decoder()
    deltas = [decoder.push(i) for i in ids]
    assert deltas[0] == "a"
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) + decoder.flush() == "a🦋b"
    assert "🦋" in deltas


def test_stream_decoder_flushes_a_dangling_partial_character(tok: TextTokenizer) -> None:
    ids = tok.encode("🦋")[:2]
    decoder = tok.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", ""]
    assert decoder.flush() == tok.decode(ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=395), max_size=40), st.booleans())
def test_stream_deltas_concatenate_to_decode(tok: TextTokenizer, ids: list[int], skip: bool) -> None:
    decoder = tok.stream_decoder(skip_special_tokens=skip)
    deltas = [decoder.push(i) for i in ids]
    assert all(not d.endswith("\ufffd") for d in deltas)
    assert "".join(deltas) + decoder.flush() == tok.decode(ids, skip_special_tokens=skip)
