"""The mock's Anthropic Messages answers: the same rules as the OpenAI face, Anthropic's shapes."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.limits.tokens import count_text
from gateway.mock_upstream.answers import anthropic_events, anthropic_message

MODEL = "claude-haiku-4-5"
WEATHER = {"name": "get_weather", "description": "Weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city", "days"]}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def _body(text: str = "Hello Claude, how are you?", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": text}], **extra}


def test_message_has_anthropics_shape() -> None:
    out = anthropic_message(_body(system="Be brief."))
    assert out["id"].startswith("msg_")
    assert (out["type"], out["role"], out["model"]) == ("message", "assistant", MODEL)
    assert out["content"] == [{"type": "text", "text": "Mock answer to: Hello Claude, how are you?"}]
    assert out["stop_reason"] == "end_turn" and out["stop_sequence"] is None
    usage = out["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"}
    assert usage["output_tokens"] == count_text(out["content"][0]["text"], MODEL)
    assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
    # The system prompt is part of the input: with it, more tokens.
    assert usage["input_tokens"] > anthropic_message(_body())["usage"]["input_tokens"]


def test_deterministic_and_model_override() -> None:
    assert anthropic_message(_body()) == anthropic_message(_body())
    assert anthropic_message(_body(), model="other")["model"] == "other"


def test_system_blocks_and_content_blocks() -> None:
    body = {"model": MODEL, "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Block one. "},
                                                      {"type": "text", "text": "Block two."}]}]}
    assert anthropic_message(body)["content"][0]["text"] == "Mock answer to: Block one. Block two."


def test_max_tokens_and_stop_sequences() -> None:
    out = anthropic_message(_body(max_tokens=2))
    assert out["stop_reason"] == "max_tokens" and out["usage"]["output_tokens"] == 2
    out = anthropic_message(_body(stop_sequences=["Claude"]))
    assert out["content"][0]["text"] == "Mock answer to: Hello "
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "Claude")


def test_tool_use_and_tool_choice() -> None:
    out = anthropic_message(_body(tools=[WEATHER, CLOCK]))
    assert out["stop_reason"] == "tool_use"
    (block,) = out["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "mock", "days": 1})
    named = anthropic_message(_body(tools=[WEATHER, CLOCK], tool_choice={"type": "tool", "name": "get_time"}))
    assert named["content"][0]["name"] == "get_time" and named["content"][0]["input"] == {}
    anyone = anthropic_message(_body(tools=[WEATHER], tool_choice={"type": "any"}))
    assert anyone["content"][0]["type"] == "tool_use"
    off = anthropic_message(_body(tools=[WEATHER], tool_choice={"type": "none"}))
    assert off["content"][0]["type"] == "text" and off["stop_reason"] == "end_turn"


def test_after_a_tool_result_the_answer_quotes_it() -> None:
    first = anthropic_message(_body(tools=[WEATHER]))
    body = _body(tools=[WEATHER])
    body["messages"] += [
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first["content"][0]["id"],
                                      "content": [{"type": "text", "text": "sunny, 21C"}]}]},
    ]
    out = anthropic_message(body)
    assert out["content"] == [{"type": "text", "text": "Tool said: sunny, 21C"}]
    assert out["stop_reason"] == "end_turn"


def test_events_follow_anthropics_order_and_add_up() -> None:
    body = _body("Stream this please, word by word.")
    plain = anthropic_message(body)
    events = anthropic_events({**body, "stream": True})
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"} and len(names) > 8
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"] == plain["id"] and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"] and start["usage"]["output_tokens"] == 1
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == plain["content"][0]["text"]
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": plain["usage"]["output_tokens"]}}


def test_tool_use_streams_input_json_deltas() -> None:
    body = _body(tools=[WEATHER])
    plain = anthropic_message(body)["content"][0]
    events = anthropic_events(body)
    assert events[1][1]["content_block"] == {**plain, "input": {}}
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert all(d["type"] == "input_json_delta" for d in deltas)
    assert orjson.loads("".join(d["partial_json"] for d in deltas)) == plain["input"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_tool_use_respects_max_tokens() -> None:
    body = {**_body(), "tools": [WEATHER]}
    whole = anthropic_message(body)
    assert whole["stop_reason"] == "tool_use" and whole["usage"]["output_tokens"] > 4
    cut = anthropic_message({**body, "max_tokens": 4})
    assert cut["stop_reason"] == "max_tokens" and cut["usage"]["output_tokens"] == 4
    assert cut["content"][0]["type"] == "tool_use"
    events = anthropic_events({**body, "max_tokens": 4})
    partial = "".join(d["delta"].get("partial_json", "") for name, d in events if name == "content_block_delta")
    assert orjson.dumps(whole["content"][0]["input"]).decode().startswith(partial)
    (delta,) = [d for name, d in events if name == "message_delta"]
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 4
