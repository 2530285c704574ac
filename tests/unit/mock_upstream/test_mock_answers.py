"""The mock's OpenAI-shaped answers: deterministic, tool-aware, truncatable, streamable."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from gateway.limits.tokens import count_messages, count_text
from gateway.mock_upstream.answers import chat_chunks, chat_completion, check_choices, embeddings_response
from gateway.mock_upstream.core import Refused, args_from_schema

MODEL = "gpt-4o-mini"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "optional": {"type": "string"},
            },
            "required": ["city", "days", "unit"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def _chat(text: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "route", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": text}], **extra}


def _without_created(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != "created"}


def _streamed_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"] and c["choices"][0]["index"] == index)


def test_same_body_same_answer_and_different_bodies_differ() -> None:
    first, second = chat_completion(_chat(), model=MODEL), chat_completion(_chat(), model=MODEL)
    assert _without_created(first) == _without_created(second)
    other = chat_completion(_chat("Something else"), model=MODEL)
    assert other["id"] != first["id"]
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]


def test_text_answer_quotes_the_last_user_message() -> None:
    out = chat_completion(_chat(), model=MODEL)
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == MODEL
    assert out["system_fingerprint"] == "mock"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Mock answer to: What is the capital of France?",
                                 "refusal": None, "annotations": []}
    assert choice["finish_reason"] == "stop"


def test_quote_is_limited_and_content_parts_are_read() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 500},
                                                      {"type": "image_url", "image_url": {"url": "data:"}}]}]}
    content = chat_completion(body, model=MODEL)["choices"][0]["message"]["content"]
    assert content == "Mock answer to: " + "x" * 200


def test_usage_counts_prompt_and_answer_tokens() -> None:
    body = _chat()
    out = chat_completion(body, model=MODEL)
    usage = out["usage"]
    assert usage["prompt_tokens"] == count_messages(body["messages"], MODEL)
    assert usage["completion_tokens"] == count_text(out["choices"][0]["message"]["content"], MODEL)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    with_tools = chat_completion(_chat(tools=[WEATHER]), model=MODEL)["usage"]
    assert with_tools["prompt_tokens"] == usage["prompt_tokens"] + count_text(orjson.dumps([WEATHER]).decode(), MODEL)


def test_max_tokens_truncates_with_finish_reason_length() -> None:
    full = chat_completion(_chat(), model=MODEL)["choices"][0]["message"]["content"]
    for key in ("max_tokens", "max_completion_tokens"):
        out = chat_completion({**_chat(), key: 3}, model=MODEL)
        text = out["choices"][0]["message"]["content"]
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == 3
        assert full.startswith(text) and len(text) < len(full)
    roomy = chat_completion(_chat(max_tokens=1000), model=MODEL)
    assert roomy["choices"][0]["finish_reason"] == "stop"


def test_stop_sequence_cuts_the_answer() -> None:
    out = chat_completion(_chat(stop=["capital"]), model=MODEL)
    assert out["choices"][0]["message"]["content"] == "Mock answer to: What is the "
    assert out["choices"][0]["finish_reason"] == "stop"


def test_n_gives_n_choices() -> None:
    one = chat_completion(_chat(), model=MODEL)
    out = chat_completion(_chat(n=3), model=MODEL)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert out["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]


@pytest.mark.parametrize("n", [0, 129, True, "2"])
def test_an_n_openai_refuses_is_refused(n: object) -> None:
    with pytest.raises(ValueError, match="'n'"):
        check_choices(_chat(n=n))
    check_choices(_chat(n=128))


def test_tool_call_from_the_first_tool_with_args_from_its_schema() -> None:
    out = chat_completion(_chat(tools=[WEATHER, CLOCK]), model=MODEL)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "mock", "days": 1, "unit": "celsius"}
    assert out["usage"]["completion_tokens"] == count_text("get_weather" + call["function"]["arguments"], MODEL)
    again = chat_completion(_chat(tools=[WEATHER, CLOCK]), model=MODEL)
    assert again["choices"][0]["message"]["tool_calls"][0]["id"] == call["id"]


def test_tool_choice_names_the_tool_or_turns_tools_off() -> None:
    named = chat_completion(_chat(tools=[WEATHER, CLOCK],
                                  tool_choice={"type": "function", "function": {"name": "get_time"}}), model=MODEL)
    call = named["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_time", "arguments": "{}"}
    off = chat_completion(_chat(tools=[WEATHER], tool_choice="none"), model=MODEL)
    assert off["choices"][0]["finish_reason"] == "stop"
    assert off["choices"][0]["message"]["content"].startswith("Mock answer to: ")


def test_after_a_tool_result_the_answer_quotes_it() -> None:
    first = chat_completion(_chat(tools=[WEATHER]), model=MODEL)
    call = first["choices"][0]["message"]["tool_calls"][0]
    body = _chat(tools=[WEATHER])
    body["messages"] += [{"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'}]
    out = chat_completion(body, model=MODEL)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == 'Tool said: {"temp_c": 21}'


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"s": {"type": "string"}, "i": {"type": "integer"},
                                           "n": {"type": "number"}, "b": {"type": "boolean"},
                                           "a": {"type": "array", "items": {"type": "string"}},
                                           "o": {"type": "object"}, "e": {"enum": [3, 4]},
                                           "x": {"type": "string"}},
          "required": ["s", "i", "n", "b", "a", "o", "e"]},
         {"s": "mock", "i": 1, "n": 1, "b": True, "a": [], "o": {}, "e": 3}),
        ({"type": "object", "properties": {"t": {"type": ["null", "integer"]}, "c": {"const": "k"},
                                           "u": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
                                           "nested": {"type": "object", "properties": {"d": {"type": "string"}},
                                                      "required": ["d"]}},
          "required": ["t", "c", "u", "nested"]},
         {"t": 1, "c": "k", "u": True, "nested": {"d": "mock"}}),
        ({}, {}),
        (None, {}),
    ],
)
def test_args_from_schema(schema: Any, expected: dict[str, Any]) -> None:
    assert args_from_schema(schema) == expected


def test_chunks_concatenate_to_the_plain_answer() -> None:
    body = _chat("Tell me   about\nwhitespace, please.")
    plain = chat_completion(body, model=MODEL)
    chunks = chat_chunks({**body, "stream": True}, model=MODEL, include_usage=False)
    assert len(chunks) > 4
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == plain["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" not in c for c in chunks)
    assert _streamed_text(chunks) == plain["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_include_usage_adds_a_usage_chunk_like_openai() -> None:
    body = _chat(max_tokens=4)
    plain = chat_completion(body, model=MODEL)
    chunks = chat_chunks(body, model=MODEL, include_usage=True)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert _streamed_text(chunks) == plain["choices"][0]["message"]["content"]


def test_tool_call_chunks_stream_like_openai() -> None:
    body = _chat(tools=[WEATHER])
    plain = chat_completion(body, model=MODEL)["choices"][0]["message"]["tool_calls"][0]
    chunks = chat_chunks(body, model=MODEL, include_usage=False)
    head = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert head == {"index": 0, "id": plain["id"], "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert len(fragments) > 1 and all(set(f) == {"index", "function"} for f in fragments)
    assert "".join(f["function"]["arguments"] for f in fragments) == plain["function"]["arguments"]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


def test_n_choices_stream_each_index() -> None:
    chunks = chat_chunks(_chat(n=2), model=MODEL, include_usage=False)
    assert _streamed_text(chunks, 0) == _streamed_text(chunks, 1) != ""


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_deterministic_unit_vectors() -> None:
    inputs = ["the cat sat", "the cat sat", "quantum tax law"]
    out = embeddings_response({"input": inputs}, model="text-embedding-3-small")
    assert out["object"] == "list" and out["model"] == "text-embedding-3-small"
    vectors = [d["embedding"] for d in out["data"]]
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert all(len(v) == 64 and abs(_dot(v, v) - 1) < 1e-9 for v in vectors)
    assert vectors[0] == vectors[1] != vectors[2]
    near = embeddings_response({"input": "the cat sat down"}, model="m")["data"][0]["embedding"]
    assert _dot(vectors[0], near) > _dot(vectors[0], vectors[2])
    assert out["usage"] == {"prompt_tokens": 2 * count_text("the cat sat", "text-embedding-3-small")
                            + count_text("quantum tax law", "text-embedding-3-small"),
                            "total_tokens": out["usage"]["prompt_tokens"]}


def test_embeddings_base64_is_little_endian_float32() -> None:
    as_float = embeddings_response({"input": "hello"}, model="m", dims=16)["data"][0]["embedding"]
    encoded = embeddings_response({"input": "hello", "encoding_format": "base64"}, model="m", dims=16)
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack("<16f", raw)
    assert decoded == pytest.approx(as_float, abs=1e-6)


def test_embeddings_accept_token_arrays_and_dimensions() -> None:
    out = embeddings_response({"input": [1, 2, 3]}, model="m")
    assert len(out["data"]) == 1 and out["usage"]["prompt_tokens"] == 3
    out = embeddings_response({"input": [[1, 2], [3, 4, 5]], "dimensions": 8}, model="m")
    assert len(out["data"]) == 2 and len(out["data"][0]["embedding"]) == 8
    assert out["usage"]["prompt_tokens"] == 5
    for bad in (None, 5, [], [{"x": 1}]):
        with pytest.raises(ValueError):
            embeddings_response({"input": bad}, model="m")


def test_tool_call_answers_respect_max_tokens() -> None:
    whole = chat_completion(_chat(tools=[WEATHER]), model=MODEL)
    call = whole["choices"][0]["message"]["tool_calls"][0]["function"]
    used = count_text(call["name"] + call["arguments"], MODEL)
    assert whole["usage"]["completion_tokens"] == used > 6
    for field in ("max_tokens", "max_completion_tokens"):
        cut = chat_completion(_chat(tools=[WEATHER], **{field: 6}), model=MODEL)
        choice = cut["choices"][0]
        assert choice["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 6
        args = choice["message"]["tool_calls"][0]["function"]["arguments"]
        assert call["arguments"].startswith(args) and len(args) < len(call["arguments"])
        assert count_text(call["name"] + args, MODEL) <= 6
    # streamed the same: the argument fragments add up to the cut arguments, usage says 6
    chunks = chat_chunks(_chat(tools=[WEATHER], max_tokens=6), model=MODEL, include_usage=True)
    streamed = "".join(tc["function"].get("arguments") or "" for c in chunks if c["choices"]
                       for tc in c["choices"][0]["delta"].get("tool_calls") or ())
    assert streamed == args and chunks[-1]["usage"]["completion_tokens"] == 6
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_tool_choice_and_dimensions_a_provider_refuses_are_refusals_not_crashes() -> None:
    odd = chat_completion(_chat(tools=[WEATHER], tool_choice={"function": 5}), model=MODEL)
    assert odd["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    with pytest.raises(Refused) as info:
        embeddings_response({"input": "x", "dimensions": 2**62}, model="text-embedding-3-small")
    assert info.value.param == "dimensions"
    deep = orjson.loads(b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 300 + b"]" * 300 + b"}")
    with pytest.raises(Refused) as info:
        chat_completion(deep, model=MODEL)
    assert info.value.code == "nesting_too_deep"


def test_large_bodies_are_answered_without_being_kept_in_the_cache() -> None:
    from gateway.mock_upstream import answers

    before = answers._cached.cache_info().currsize
    big = chat_completion(_chat("x " * 40_000), model=MODEL)
    assert big["choices"][0]["message"]["content"].startswith("Mock answer to: x x")
    assert answers._cached.cache_info().currsize == before
