from __future__ import annotations

import pytest

from gateway.errors import BadRequest, InvalidJSON
from gateway.http.validation import parse_json_object, validate_chat, validate_embeddings


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    for raw in (b"{", b"\xff", b"[" * 2000 + b"]" * 2000):
        with pytest.raises(InvalidJSON):
            parse_json_object(raw)
    for raw in (b"", b"[]", b"1", b"null"):
        with pytest.raises(BadRequest):
            parse_json_object(raw)


def test_valid_chat_returns_the_route_and_keeps_the_body() -> None:
    body = {"model": "r", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
            "stream": True, "stream_options": {"include_usage": True}, "weird": object()}
    assert validate_chat(body) == "r"
    assert "weird" in body


@pytest.mark.parametrize(("patch", "param"), [
    ({"model": ""}, "model"),
    ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0].content"),
    # Unhashable or missing roles, malformed tool calls: each a 400 naming the field, never a 500.
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": ["x"]}]}, "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": [1]}]}]}, "messages[0].tool_calls[0]"),
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    # every choice is billed: OpenAI's bound on n, so no body asks for more than is reserved
    ({"n": 129}, "n"),
    ({"n": 0}, "n"),
    ({"n": True}, "n"),
    ({"n": 2.0}, "n"),
    ({"best_of": 129}, "best_of"),  # a server that takes it generates (and may bill) best_of sequences
    ({"best_of": "9"}, "best_of"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"temperature": "hot"}, "temperature"),
])
def test_invalid_chat_names_the_param(patch: dict, param: str) -> None:
    body = {"model": "r", "messages": [{"role": "user", "content": "x"}], **patch}
    with pytest.raises(BadRequest) as info:
        validate_chat(body)
    assert info.value.param == param and info.value.status == 400


@pytest.mark.parametrize("inp", ["a", ["a", "b"], [1, 2], [[1], [2, 3]]])
def test_embeddings_inputs(inp: object) -> None:
    assert validate_embeddings({"model": "e", "input": inp}) == "e"


@pytest.mark.parametrize("inp", [None, [], [[]], ["a", 1], {"a": 1}, [True]])
def test_bad_embeddings_inputs(inp: object) -> None:
    with pytest.raises(BadRequest) as info:
        validate_embeddings({"model": "e", "input": inp})
    assert info.value.param == "input"
