"""OpenAI request checks and response shapes, without a server."""

from __future__ import annotations

import json

import pytest

from server.api.errors import InvalidRequest, ModelNotFound, api_error
from server.api.openai_schema import (
    Envelope,
    chat_chunk,
    chat_completion,
    model_list,
    parse_chat_request,
    parse_text_request,
    sse_event,
    text_completion,
    usage_body,
    usage_chunk,
)

MODEL = "SmolLM2-135M-Instruct"


def chat(**fields):  # noqa: ANN003, ANN201
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_chat_request(body, model_name=MODEL, default_max_tokens=2048)


def text(**fields):  # noqa: ANN003, ANN201
    body = {"model": MODEL, "prompt": "Once", **fields}
    return parse_text_request(body, model_name=MODEL, vocab_size=100, default_max_tokens=2048)


def test_defaults_follow_openai() -> None:
    req = chat()
    assert req.params.temperature == 1.0 and req.params.top_p == 1.0 and req.params.top_k == 0
    assert req.params.max_tokens == 2048 and req.params.seed is None and req.params.stop == ()
    assert not req.stream and not req.include_usage
    assert req.messages == ({"role": "user", "content": "hi"},)


def test_sampling_fields_are_honoured() -> None:
    req = chat(temperature=0, top_p=0.5, max_tokens=7, seed=42, stop="\n", stream=True, stream_options={"include_usage": True})
    p = req.params
    assert (p.temperature, p.top_p, p.max_tokens, p.seed, p.stop) == (0.0, 0.5, 7, 42, ("\n",))
    assert req.stream and req.include_usage
    assert chat(max_tokens=7, max_completion_tokens=3).params.max_tokens == 3
    assert chat(stop=["a", "bc"]).params.stop == ("a", "bc")
    assert chat(max_tokens=10**9).params.max_tokens == 2048  # bounded by the context
    assert chat(top_k=5).params.top_k == 5 and chat(top_k=-1).params.top_k == 0
    assert chat(top_p=0).params.top_p > 0
    assert chat(seed=-1).params.seed == 2**63 - 1
    assert chat(n=1, presence_penalty=0, frequency_penalty=0.0, user="u", response_format={"type": "text"}).params


def test_message_forms() -> None:
    req = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
        ]
    )
    assert req.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
    )


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"messages": None}, "messages", "provide a messages"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": ["hi"]}, "messages[0]", "object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "must be one of"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content", "text only"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "string"),
        ({"temperature": 2.5}, "temperature", "between 0 and 2"),
        ({"temperature": -0.1}, "temperature", "between 0 and 2"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"top_p": 1.5}, "top_p", "between 0 and 1"),
        ({"max_tokens": 0}, "max_tokens", "positive integer"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens", "positive integer"),
        ({"n": 2}, "n", "n must be 1"),
        ({"seed": "x"}, "seed", "integer"),
        ({"stop": ["", "a"]}, "stop", "non-empty"),
        ({"stop": [str(i) for i in range(9)]}, "stop", "at most"),
        ({"stream": "yes"}, "stream", "boolean"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage", "boolean"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "text"),
        ({"top_k": -3}, "top_k", "non-negative"),
        ({"model": None}, "model", "provide a model"),
        ({"model": 5}, "model", "string"),
    ],
)
def test_bad_chat_requests_name_the_parameter(fields: dict, param: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        chat(**fields)
    assert info.value.param == param
    err = api_error(info.value)
    assert err.status == 400 and err.type == "invalid_request_error" and err.param == param


def test_unknown_model_is_404_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as info:
        chat(model="gpt-4o")
    err = api_error(info.value)
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert MODEL in err.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_chat_request([1, 2], model_name=MODEL, default_max_tokens=10)


def test_text_prompts() -> None:
    assert text().prompt == "Once"
    assert text(prompt=["Once"]).prompt == "Once"
    assert text(prompt=[1, 2, 3]).prompt == (1, 2, 3)
    assert text(prompt=[[4, 5]]).prompt == (4, 5)
    for bad, message in [("", "empty"), ([100], r"\[0, 100\)"), (["a", "b"], "one prompt"), (None, "provide a prompt"), ([True], "one prompt")]:
        with pytest.raises(InvalidRequest, match=message):
            text(prompt=bad)
    for field, value in [("echo", True), ("suffix", "x"), ("best_of", 2), ("logprobs", 1), ("n", 3)]:
        with pytest.raises(InvalidRequest) as info:
            text(**{field: value})
        assert info.value.param == field


def test_chat_shapes_match_openai() -> None:
    env = Envelope.new("chat", model=MODEL, fingerprint="fp", now=1700000000.5)
    assert env.id.startswith("chatcmpl-") and env.created == 1700000000
    usage = usage_body(5, 3)
    assert usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    whole = chat_completion(env, text="Hello", finish_reason="stop", usage=usage)
    assert whole["object"] == "chat.completion" and whole["model"] == MODEL
    assert whole["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello", "refusal": None}, "logprobs": None, "finish_reason": "stop"}
    ]
    chunk = chat_chunk(env, delta={"content": "He"}, include_usage=True)
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None
    assert chunk["choices"][0] == {"index": 0, "delta": {"content": "He"}, "logprobs": None, "finish_reason": None}
    assert "usage" not in chat_chunk(env, delta={}, finish_reason="length")
    last = usage_chunk(env, chat=True, usage=usage)
    assert last["choices"] == [] and last["usage"] == usage and last["id"] == env.id


def test_text_and_model_shapes() -> None:
    env = Envelope.new("text", model=MODEL, fingerprint="fp")
    assert env.id.startswith("cmpl-")
    body = text_completion(env, text="x", finish_reason="length", usage=usage_body(1, 1))
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"text": "x", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert "usage" not in text_completion(env, text="x", finish_reason=None, usage=None)
    models = model_list(MODEL, created=1, owner="butterfly")
    assert models == {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "butterfly"}]}


def test_sse_event_is_one_compact_data_line() -> None:
    raw = sse_event({"a": "é\n"})
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2
    assert json.loads(raw[6:]) == {"a": "é\n"}
