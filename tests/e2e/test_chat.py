"""Chat completions through the gateway with the official OpenAI SDK, sync and async."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway import GatewayInstance

HELLO = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city", "days"]},
    },
}


@pytest.mark.parametrize("route", ["chat", "claude", "azure", "demo"])
def test_sync_chat_answers_in_openai_shape(gateway: GatewayInstance, route: str) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(model=route, messages=HELLO)
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Mock answer to: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-gateway-route"] == route
    assert raw.headers["x-gateway-attempts"] == "1"


async def test_async_chat(gateway: GatewayInstance) -> None:
    async with gateway.async_client() as client:
        answer = await client.chat.completions.create(model="chat", messages=HELLO)
    assert answer.choices[0].message.content == "Mock answer to: hello there"


def test_client_request_id_is_kept_and_logged(gateway: GatewayInstance) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=HELLO, extra_headers={"x-request-id": "trace-abc.123"})
    assert raw.headers["x-request-id"] == "trace-abc.123"
    record = gateway.wait_log("trace-abc.123")
    assert record["tenant"] == "acme" and record["route"] == "chat" and record["provider"] == "up"
    assert record["status"] == 200 and record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
    assert record["model"] == "chat" and record["latency_ms"] > 0
    assert record["key_id"] == "env:TENANT_ACME_KEY"


def test_insane_request_id_is_replaced(gateway: GatewayInstance) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="demo", messages=HELLO, extra_headers={"x-request-id": "bad id with spaces"})
    assert raw.headers["x-request-id"].startswith("req_")


def test_unknown_fields_pass_through_untouched(gateway: GatewayInstance, upstream_log) -> None:
    gateway.client().chat.completions.create(
        model="chat", messages=HELLO, seed=7, user="u-1", stop=["\n\n"], logprobs=True, top_logprobs=2,
        response_format={"type": "json_object"}, logit_bias={"50256": -100}, n=1,
        extra_body={"custom_vendor_field": {"nested": [1, 2, 3]}})
    sent = upstream_log()[-1]["body"]
    assert sent["model"] == "gpt-4o-mini"  # the route's target model replaces the route name
    for key, value in {"seed": 7, "user": "u-1", "stop": ["\n\n"], "logprobs": True, "top_logprobs": 2,
                       "response_format": {"type": "json_object"}, "logit_bias": {"50256": -100}, "n": 1,
                       "custom_vendor_field": {"nested": [1, 2, 3]}, "messages": HELLO}.items():
        assert sent[key] == value, key


def test_upstream_receives_the_providers_key_not_the_clients(gateway: GatewayInstance, upstream_log) -> None:
    gateway.client().chat.completions.create(model="chat", messages=HELLO)
    headers = upstream_log()[-1]["headers"]
    assert headers["authorization"] == "Bearer sk-upstream-secret-0123456789abcdef"
    assert gateway.key("acme") not in json.dumps(headers)


def test_route_max_tokens_caps_and_defaults(gateway: GatewayInstance, upstream_log) -> None:
    client = gateway.client()
    answer = client.chat.completions.create(model="capped", messages=HELLO, max_tokens=100)
    assert answer.choices[0].finish_reason == "length"
    assert upstream_log()[-1]["body"]["max_tokens"] == 3
    client.chat.completions.create(model="capped", messages=HELLO)
    assert upstream_log()[-1]["body"]["max_tokens"] == 3
    client.chat.completions.create(model="capped", messages=HELLO, max_completion_tokens=2)
    body = upstream_log()[-1]["body"]
    assert body["max_completion_tokens"] == 2 and "max_tokens" not in body


@pytest.mark.parametrize("route", ["chat", "claude", "azure", "demo"])
def test_tool_call_round_trip(gateway: GatewayInstance, route: str) -> None:
    client = gateway.client()
    first = client.chat.completions.create(model=route, messages=HELLO, tools=[WEATHER_TOOL], tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "days": 1}
    second = client.chat.completions.create(model=route, tools=[WEATHER_TOOL], messages=[
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool said: sunny, 21C"


def test_failover_to_the_next_target_when_the_first_is_down(gateway: GatewayInstance) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(model="failover", messages=HELLO)
    assert raw.parse().choices[0].message.content == "Mock answer to: hello there"
    assert raw.headers["x-gateway-provider"] == "up"
    assert raw.headers["x-gateway-attempts"] == "2"
    record = gateway.wait_log(raw.headers["x-request-id"])
    assert [a["provider"] for a in record["attempts"]] == ["dead", "up"]
    assert record["attempts"][0]["error"] == "UpstreamUnavailable"
