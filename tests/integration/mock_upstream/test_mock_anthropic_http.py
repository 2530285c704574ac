"""The mock's Anthropic face, spoken to by the official `anthropic` SDK (its stream helpers included)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.support.processes import RunningProcess

MODEL = "claude-haiku-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a short story."}]
WEATHER: Any = {"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                                  "days": {"type": "integer"}},
                                 "required": ["city", "days"]}}


@pytest.fixture
def client(mock: RunningProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0, timeout=10)


def test_message(client: anthropic.Anthropic) -> None:
    out = client.messages.create(model=MODEL, max_tokens=100, system="Be brief.", messages=MESSAGES)
    assert out.id.startswith("msg_") and out.model == MODEL and out.role == "assistant"
    assert out.content[0].type == "text" and out.content[0].text == "Mock answer to: Tell me a short story."
    assert out.stop_reason == "end_turn"
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0


def test_stream_helpers_parse_the_stream(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model=MODEL, max_tokens=4, messages=MESSAGES)
    with client.messages.stream(model=MODEL, max_tokens=4, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    first, streamed = plain.content[0], final.content[0]
    assert first.type == "text" and streamed.type == "text"
    assert text == first.text == streamed.text and final.stop_reason == "max_tokens"
    assert final.id == plain.id
    assert final.usage.output_tokens == plain.usage.output_tokens == 4
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    first = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    block = first.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "mock", "days": 1}
    follow = [*MESSAGES, {"role": "assistant", "content": [block.model_dump()]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Rainy"}]}]
    second = client.messages.create(model=MODEL, max_tokens=100, messages=follow, tools=[WEATHER])
    assert second.content[0].type == "text" and second.content[0].text == "Tool said: Rainy"


def test_streamed_tool_use_with_input_json_delta(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_message()
    assert "input_json" in kinds
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"city": "mock", "days": 1}
    assert final.stop_reason == "tool_use"


def test_models_list_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    assert all(m.id.startswith("claude") for m in client.models.list())


def test_requests_anthropic_would_refuse(http: httpx.Client) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES}
    no_version = http.post("/v1/messages", json=body)
    assert no_version.status_code == 400
    assert no_version.json()["type"] == "error"
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in no_version.json()["error"]["message"]
    headers = {"anthropic-version": "2023-06-01"}
    no_max = http.post("/v1/messages", json={"model": MODEL, "messages": MESSAGES}, headers=headers)
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    bad_json = http.post("/v1/messages", content=b"[1, 2", headers=headers)
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    ok = http.post("/v1/messages", json=body, headers=headers)
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")
