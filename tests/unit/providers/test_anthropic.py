"""AnthropicDialect: OpenAI Chat Completions <-> Anthropic Messages, without any network.

Upstream fixtures are validated with the anthropic SDK's models so they stay realistic, and
what the dialect produces for clients is validated with the openai SDK's models.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from gateway.errors import (
    BadRequest,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.providers.anthropic import AnthropicDialect
from gateway.providers.anthropic_stream import AnthropicStreamTranslator
from gateway.providers.base import Dialect
from gateway.settings import ProviderSettings

MODEL = "claude-sonnet-4-5"


def provider_settings(**fields: Any) -> ProviderSettings:
    return ProviderSettings.model_validate({"kind": "anthropic", **fields})


SETTINGS = provider_settings(base_url="https://api.anthropic.com", api_key="sk-ant-test-123456")
EVENT = TypeAdapter(RawMessageStreamEvent)


@pytest.fixture(scope="module")
def dialect() -> AnthropicDialect:
    return AnthropicDialect()


def encode(dialect: AnthropicDialect, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return dialect.encode_chat({"model": "route", **body}, MODEL, SETTINGS)


def bad_param(dialect: AnthropicDialect, **body: Any) -> str | None:
    with pytest.raises(BadRequest) as info:
        encode(dialect, **body)
    return info.value.param


# ---------------------------------------------------------------- urls and headers

def test_is_a_complete_dialect(dialect: AnthropicDialect) -> None:
    assert isinstance(dialect, Dialect)
    assert dialect.embeddings_url(SETTINGS, MODEL) is None


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
        ("https://proxy.local/anthropic/v1", "https://proxy.local/anthropic/v1/messages"),
        ("https://proxy.local/anthropic/v1/", "https://proxy.local/anthropic/v1/messages"),
    ],
)
def test_chat_url(dialect: AnthropicDialect, base_url: str, expected: str) -> None:
    settings = provider_settings(base_url=base_url)
    assert dialect.chat_url(settings, MODEL) == expected


def test_auth_headers(dialect: AnthropicDialect) -> None:
    assert dialect.auth_headers(SETTINGS) == {
        "x-api-key": "sk-ant-test-123456",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }


def test_auth_headers_without_key_and_with_version_override(dialect: AnthropicDialect) -> None:
    settings = provider_settings(base_url="http://127.0.0.1:9", api_version="2099-01-01")
    headers = dialect.auth_headers(settings)
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == "2099-01-01"


# ---------------------------------------------------------------- request: basics

def test_minimal_request(dialect: AnthropicDialect) -> None:
    assert encode(dialect) == {
        "model": MODEL,
        "max_tokens": SETTINGS.default_max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_system_and_developer_messages_merge_wherever_they_are(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "assistant", "content": "Salut"},
        {"role": "system", "content": "No emojis."},
        {"role": "user", "content": "ça va ?"},
    ])
    assert out["system"] == "Be brief.\n\nAnswer in French.\n\nNo emojis."
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_system_keeps_blocks_when_cache_control_is_asked(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[
        {"role": "system", "content": [
            {"type": "text", "text": "long policy", "cache_control": {"type": "ephemeral"}},
        ]},
        {"role": "system", "content": "short"},
        {"role": "user", "content": "hi"},
    ])
    assert out["system"] == [
        {"type": "text", "text": "long policy", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "short"},
    ]


def test_no_system_key_without_system_messages(dialect: AnthropicDialect) -> None:
    assert "system" not in encode(dialect)


def test_multi_turn_keeps_order_and_strings(dialect: AnthropicDialect) -> None:
    msgs = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]
    assert encode(dialect, messages=msgs)["messages"] == msgs


def test_consecutive_same_role_messages_merge(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": "d"},
    ])
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
    ]


def test_conversation_starting_with_assistant_is_passed_as_is(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "hi"},
    ])
    assert [m["role"] for m in out["messages"]] == ["assistant", "user"]


def test_empty_assistant_message_is_dropped(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "b"},
    ])
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]


def test_assistant_refusal_part_becomes_text(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
    ])
    assert out["messages"][1]["content"] == [{"type": "text", "text": "I can't."}]


def test_message_names_are_dropped(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[{"role": "user", "name": "bob", "content": "hi"}])
    assert out["messages"] == [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------- request: images and files

def test_images_from_data_and_http_urls(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=[{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("url", ["data:image/png,not-base64", "ftp://example.com/a.png", "file:///etc/passwd"])
def test_bad_image_urls(dialect: AnthropicDialect, url: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    assert bad_param(dialect, messages=messages) == "messages[0].content[0].image_url.url"


def test_pdf_file_part_becomes_document(dialect: AnthropicDialect) -> None:
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    out = encode(dialect, messages=[{"role": "user", "content": [part]}])
    assert out["messages"][0]["content"] == [{
        "type": "document",
        "title": "a.pdf",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }]


def test_file_id_and_audio_parts_are_refused(dialect: AnthropicDialect) -> None:
    file_part = {"type": "file", "file": {"file_id": "file-abc"}}
    assert bad_param(dialect, messages=[{"role": "user", "content": [file_part]}]) == "messages[0].content[0].file"
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    assert bad_param(dialect, messages=[{"role": "user", "content": [audio]}]) == "messages[0].content[0].type"


# ---------------------------------------------------------------- request: tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
NOW = {"type": "function", "function": {"name": "now"}}


def test_tool_definitions(dialect: AnthropicDialect) -> None:
    out = encode(dialect, tools=[WEATHER, NOW])
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "now"}}, None, {"type": "tool", "name": "now"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ({"type": "function", "function": {"name": "now"}}, False,
         {"type": "tool", "name": "now", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(dialect: AnthropicDialect, choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"tools": [WEATHER, NOW], "tool_choice": choice}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert encode(dialect, **body)["tool_choice"] == expected


def test_tool_choice_without_tools_is_dropped(dialect: AnthropicDialect) -> None:
    out = encode(dialect, tool_choice="none", parallel_tool_calls=False)
    assert "tool_choice" not in out and "tools" not in out


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tools": [NOW], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [NOW], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
    ],
)
def test_bad_tools(dialect: AnthropicDialect, body: dict[str, Any], param: str) -> None:
    assert bad_param(dialect, **body) == param


TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Rome, and the time?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
    {"role": "tool", "tool_call_id": "call_3", "content": "12:00"},
    {"role": "user", "content": "Thanks, summarise."},
]


def test_assistant_tool_calls_and_tool_results(dialect: AnthropicDialect) -> None:
    out = encode(dialect, messages=TOOL_CONVERSATION, tools=[WEATHER, NOW])
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome, and the time?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "tool_use", "id": "call_3", "name": "now", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
            {"type": "tool_result", "tool_use_id": "call_3", "content": "12:00"},
            {"type": "text", "text": "Thanks, summarise."},
        ]},
    ]


def test_assistant_with_only_tool_calls_has_no_text_block(dialect: AnthropicDialect) -> None:
    msgs = [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_9", "content": "12:00"},
    ]
    out = encode(dialect, messages=msgs, tools=[NOW])
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "call_9", "name": "now", "input": {}}]
    assert out["messages"][2] == {
        "role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9", "content": "12:00"}],
    }


def test_tool_results_lead_a_user_turn_that_came_first(dialect: AnthropicDialect) -> None:
    msgs = [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ]},
        {"role": "user", "content": "hurry"},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
    ]
    last = encode(dialect, messages=msgs)["messages"][-1]
    assert [b["type"] for b in last["content"]] == ["tool_result", "text"]


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", "not json"])
def test_invalid_tool_call_arguments(dialect: AnthropicDialect, arguments: str) -> None:
    msgs = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "now", "arguments": arguments}},
        ]},
    ]
    assert bad_param(dialect, messages=msgs) == "messages[1].tool_calls"


def test_tool_message_without_id(dialect: AnthropicDialect) -> None:
    msgs = [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]
    assert bad_param(dialect, messages=msgs) == "messages[1].tool_call_id"


# ---------------------------------------------------------------- request: parameters

def test_sampling_and_misc_parameters(dialect: AnthropicDialect) -> None:
    out = encode(dialect, temperature=1.5, top_p=0.9, stream=True, user="u-42",
                 stream_options={"include_usage": True})
    assert out["temperature"] == 1.5  # passed unchanged: Anthropic validates its own range
    assert out["top_p"] == 0.9
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "u-42"}
    assert "stream_options" not in out


@pytest.mark.parametrize(("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_stop_sequences(dialect: AnthropicDialect, stop: Any, expected: list[str]) -> None:
    assert encode(dialect, stop=stop)["stop_sequences"] == expected


def test_no_stop_sequences_when_absent_or_empty(dialect: AnthropicDialect) -> None:
    assert "stop_sequences" not in encode(dialect, stop=None)
    assert "stop_sequences" not in encode(dialect, stop=[])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, 4096),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_tokens": 100, "max_completion_tokens": 200}, 200),
        ({"max_tokens": 300, "max_completion_tokens": 200}, 300),  # the larger, as the gateway reserved
        ({"max_tokens": None}, 4096),
    ],
)
def test_max_tokens(dialect: AnthropicDialect, body: dict[str, Any], expected: int) -> None:
    assert encode(dialect, **body)["max_tokens"] == expected


def test_max_tokens_default_comes_from_settings(dialect: AnthropicDialect) -> None:
    settings = provider_settings(base_url="https://x", default_max_tokens=77)
    out = dialect.encode_chat({"messages": [{"role": "user", "content": "hi"}]}, MODEL, settings)
    assert out["max_tokens"] == 77


def test_harmless_openai_fields_are_dropped(dialect: AnthropicDialect) -> None:
    out = encode(dialect, seed=1, frequency_penalty=0.5, presence_penalty=0.5, logit_bias={"1": 2},
                 service_tier="auto", store=True, metadata={"a": "b"}, n=1, logprobs=False,
                 response_format={"type": "text"}, reasoning_effort="low", something_new=1)
    assert set(out) == {"model", "max_tokens", "messages"}


def test_anthropic_native_extras_pass_through(dialect: AnthropicDialect) -> None:
    out = encode(dialect, top_k=5, thinking={"type": "enabled", "budget_tokens": 1024})
    assert out["top_k"] == 5
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_json_schema_response_format_becomes_output_config(dialect: AnthropicDialect) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}
    out = encode(dialect, response_format=fmt)
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"stop": 5}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "10"}, "max_completion_tokens"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
    ],
)
def test_unsupported_parameters_name_the_param(dialect: AnthropicDialect, body: dict[str, Any], param: str) -> None:
    assert bad_param(dialect, **body) == param


# ---------------------------------------------------------------- response

def anthropic_message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> bytes:
    raw = {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }
    Message.model_validate(raw)  # keep the fixture honest
    return orjson.dumps(raw)


def decoded(dialect: AnthropicDialect, raw: bytes) -> tuple[dict[str, Any], ChatCompletion]:
    result = dialect.decode_chat(raw, "route")
    body = orjson.loads(result.body)
    return body, ChatCompletion.model_validate(body)


def test_decode_text(dialect: AnthropicDialect) -> None:
    raw = anthropic_message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}])
    result = dialect.decode_chat(raw, "route")
    body, completion = decoded(dialect, raw)
    assert body["id"] == "msg_01XYZ"
    assert body["object"] == "chat.completion"
    assert body["model"] == "claude-sonnet-4-5-20250929"
    assert isinstance(body["created"], int)
    assert completion.choices[0].message.content == "Hello world"
    assert completion.choices[0].message.tool_calls is None
    assert body["choices"][0]["message"]["refusal"] is None
    assert completion.choices[0].finish_reason == "stop"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert result.served_model == "claude-sonnet-4-5-20250929"
    assert result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.reported) == (10, 5, True)


def test_decode_tool_use_only(dialect: AnthropicDialect) -> None:
    raw = anthropic_message(
        [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}}],
        stop_reason="tool_use",
    )
    body, completion = decoded(dialect, raw)
    message = completion.choices[0].message
    assert message.content is None
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call == {"id": "toolu_01", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":[1,2]}'}}


def test_decode_mixed_text_thinking_and_tools(dialect: AnthropicDialect) -> None:
    raw = anthropic_message([
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ], stop_reason="tool_use")
    body, completion = decoded(dialect, raw)
    message = completion.choices[0].message
    assert message.content == "Checking both."
    assert [c["id"] for c in body["choices"][0]["message"]["tool_calls"]] == ["toolu_1", "toolu_2"]
    assert "The user wants weather." not in result_text(body)


def result_text(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def test_decode_usage_with_cache_tokens(dialect: AnthropicDialect) -> None:
    raw = anthropic_message([{"type": "text", "text": "ok"}],
                            cache_read_input_tokens=1000, cache_creation_input_tokens=200)
    result = dialect.decode_chat(raw, "route")
    body = orjson.loads(result.body)
    assert body["usage"] == {"prompt_tokens": 1210, "completion_tokens": 5, "total_tokens": 1215,
                             "prompt_tokens_details": {"cached_tokens": 1000}}
    assert (result.usage.prompt_tokens, result.usage.cached_tokens, result.usage.total_tokens) == (1210, 1000, 1215)


@pytest.mark.parametrize("usage", [{"input_tokens": -3}, {"output_tokens": 2**41}, {"cache_read_input_tokens": 2.5}])
def test_impossible_usage_is_a_bad_answer(dialect: AnthropicDialect, usage: dict[str, Any]) -> None:
    raw = orjson.loads(anthropic_message([{"type": "text", "text": "ok"}]))
    raw["usage"].update(usage)
    with pytest.raises(UpstreamBadResponse, match="impossible usage"):
        dialect.decode_chat(orjson.dumps(raw), "route")


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_decode_every_stop_reason(dialect: AnthropicDialect, stop_reason: str, finish_reason: str) -> None:
    result = dialect.decode_chat(anthropic_message([{"type": "text", "text": "x"}], stop_reason), "route")
    assert result.finish_reason == finish_reason
    assert orjson.loads(result.body)["choices"][0]["finish_reason"] == finish_reason


def test_decode_empty_content_gives_empty_string(dialect: AnthropicDialect) -> None:
    _, completion = decoded(dialect, anthropic_message([], "max_tokens"))
    assert completion.choices[0].message.content == ""


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>502 Bad Gateway</html>",
        b"",
        b"[]",
        b'{"id": "msg_1", "content": "text", "usage": {}}',
        b'{"id": "msg_1", "content": [], "model": "m"}',
        b'{"content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}',
        b'{"id": "m", "content": [{"type": "tool_use", "input": {}}], "usage": {}}',
        b'{"id": "m", "content": ["text"], "usage": {}}',
    ],
)
def test_decode_malformed_bodies(dialect: AnthropicDialect, raw: bytes) -> None:
    with pytest.raises(UpstreamBadResponse):
        dialect.decode_chat(raw, "route")


# ---------------------------------------------------------------- errors

def test_error_message_from_anthropic_error(dialect: AnthropicDialect) -> None:
    raw = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}'
    assert dialect.error_message(400, raw) == ("max_tokens: field required", None, "invalid_request_error")


@pytest.mark.parametrize("raw", [b"upstream connect error", b"", b'{"error": "nope"}', b"[1]"])
def test_error_message_fallback(dialect: AnthropicDialect, raw: bytes) -> None:
    message, param, code = dialect.error_message(503, raw)
    assert "503" in message and param is None and code is None


# ---------------------------------------------------------------- streaming

def sse(event: dict[str, Any]) -> tuple[str, bytes]:
    EVENT.validate_python(event)  # keep the fixture honest
    return event["type"], orjson.dumps(event)


def message_start(input_tokens: int = 25, **usage: int) -> dict[str, Any]:
    return {"type": "message_start", "message": {
        "id": "msg_stream_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
    }}


def text_block(index: int, *pieces: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}}
          for p in pieces),
        {"type": "content_block_stop", "index": index},
    ]


def tool_block(index: int, tool_id: str, name: str, *fragments: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index,
         "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}},
        *({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": f}}
          for f in ("", *fragments)),
        {"type": "content_block_stop", "index": index},
    ]


def message_end(stop_reason: str, output_tokens: int) -> list[dict[str, Any]]:
    return [
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
         "usage": {"output_tokens": output_tokens}},
        {"type": "message_stop"},
    ]


def run_stream(translator: AnthropicStreamTranslator, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    payloads: list[bytes] = []
    payloads += translator.feed("ping", b'{"type": "ping"}')
    for event in events:
        payloads += translator.feed(*sse(event))
    payloads += translator.finish()
    chunks = [orjson.loads(p) for p in payloads]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return chunks


TEXT_EVENTS = [message_start(), *text_block(0, "Hello", ", ", "world!"), *message_end("end_turn", 12)]


def test_stream_text_without_usage(dialect: AnthropicDialect) -> None:
    translator = dialect.stream_translator("route", include_usage=False)
    chunks = run_stream(translator, TEXT_EVENTS)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello, world!"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    for chunk in chunks:
        assert chunk["id"] == "msg_stream_1"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "claude-sonnet-4-5-20250929"
        assert chunk["created"] == chunks[0]["created"]
        assert "usage" not in chunk
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (25, 12)
    assert translator.usage.reported
    assert translator.finish_reason == "stop"
    assert translator.served_model == "claude-sonnet-4-5-20250929"


def test_stream_text_with_usage_chunk(dialect: AnthropicDialect) -> None:
    events = [message_start(25, cache_read_input_tokens=100, cache_creation_input_tokens=5),
              *text_block(0, "Hi"), *message_end("max_tokens", 3)]
    chunks = run_stream(dialect.stream_translator("route", include_usage=True), events)
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 130, "completion_tokens": 3, "total_tokens": 133,
                             "prompt_tokens_details": {"cached_tokens": 100}}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_two_tool_calls(dialect: AnthropicDialect) -> None:
    paris = {"city": "Paris", "units": "metric"}
    rome = {"city": "Rome", "nested": {"days": [1, 2, 3]}}
    events = [
        message_start(),
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "secret"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_stop", "index": 0},
        *text_block(1, "Let me ", "check."),
        *tool_block(2, "toolu_A", "get_weather", '{"city": "Pa', 'ris", "units"', ': "metric"}'),
        *tool_block(3, "toolu_B", "get_weather", '{"city": "Rome", ', '"nested": {"days": [1, 2', ', 3]}}'),
        *message_end("tool_use", 80),
    ]
    translator = dialect.stream_translator("route", include_usage=True)
    chunks = run_stream(translator, events)

    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Let me check."
    assert "secret" not in orjson.dumps(chunks).decode()

    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            call = calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in delta:
                assert delta["type"] == "function"
                call["id"], call["name"] = delta["id"], delta["function"]["name"]
            call["arguments"] += delta["function"]["arguments"]
    assert sorted(calls) == [0, 1]  # OpenAI tool-call indexes, not Anthropic block indexes 2 and 3
    assert (calls[0]["id"], calls[0]["name"]) == ("toolu_A", "get_weather")
    assert (calls[1]["id"], calls[1]["name"]) == ("toolu_B", "get_weather")
    assert orjson.loads(calls[0]["arguments"]) == paris
    assert orjson.loads(calls[1]["arguments"]) == rome

    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    assert translator.finish_reason == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 80


def test_stream_message_delta_usage_is_cumulative(dialect: AnthropicDialect) -> None:
    translator = dialect.stream_translator("route", include_usage=False)
    translator.feed(*sse(message_start(7)))
    for total in (3, 9):
        translator.feed(*sse({"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None},
                              "usage": {"output_tokens": total}}))
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (7, 9)


def test_stream_ignores_unknown_events_and_empty_data(dialect: AnthropicDialect) -> None:
    translator = dialect.stream_translator("route", include_usage=True)
    assert translator.feed(None, b"") == []
    assert translator.feed("future_event", b'{"type": "future_event", "x": 1}') == []
    assert translator.finish() == []  # nothing started, nothing to report


@pytest.mark.parametrize(
    ("error_type", "exc"),
    [
        ("overloaded_error", UpstreamUnavailable),
        ("rate_limit_error", UpstreamRateLimited),
        ("api_error", UpstreamError),
        ("invalid_request_error", UpstreamRejected),
        ("authentication_error", UpstreamAuthFailed),
        ("brand_new_error", UpstreamError),
    ],
)
def test_stream_error_event(dialect: AnthropicDialect, error_type: str, exc: type[UpstreamError]) -> None:
    translator = dialect.stream_translator("route", include_usage=False)
    translator.feed(*sse(message_start()))
    data = orjson.dumps({"type": "error", "error": {"type": error_type, "message": "Overloaded"}})
    with pytest.raises(exc) as info:
        translator.feed("error", data)
    assert type(info.value) is exc
    assert "Overloaded" in info.value.message


def test_stream_error_event_redacts_secrets(dialect: AnthropicDialect) -> None:
    translator = dialect.stream_translator("route", include_usage=False)
    data = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "bad key sk-ant-abcdef123456"}})
    with pytest.raises(UpstreamError) as info:
        translator.feed("error", data)
    assert "sk-ant-abcdef123456" not in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "message_start", "message": {}}',
        b'{"type": "content_block_start", "index": 0}',
        b'{"type": "content_block_delta", "index": 0}',
    ],
)
def test_stream_malformed_events(dialect: AnthropicDialect, data: bytes) -> None:
    translator = dialect.stream_translator("route", include_usage=False)
    with pytest.raises(UpstreamBadResponse):
        translator.feed("message_start", data)


def test_a_tool_input_too_deep_to_encode_is_a_bad_response(dialect: AnthropicDialect) -> None:
    deep = b"[" * 300 + b"]" * 300
    raw = (b'{"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use", '
           b'"usage": {"input_tokens": 1, "output_tokens": 1}, "content": [{"type": "tool_use", "id": "t", '
           b'"name": "f", "input": {"a": ' + deep + b"}}]}")
    with pytest.raises(UpstreamBadResponse):
        dialect.decode_chat(raw, "claude")
