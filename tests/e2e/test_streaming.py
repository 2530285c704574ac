"""Streaming through the gateway: real SSE, usage on request, tool calls, client disconnects."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.e2e.test_chat import HELLO, WEATHER_TOOL
from tests.support.gateway import GatewayInstance


@pytest.mark.parametrize("route", ["chat", "claude", "azure", "demo"])
def test_stream_concatenates_to_the_full_answer(gateway: GatewayInstance, route: str) -> None:
    chunks = list(gateway.client().chat.completions.create(model=route, messages=HELLO, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock answer to: hello there"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really chunked
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the client did not ask for usage: no usage-only chunk
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("route", ["chat", "claude", "demo"])
def test_stream_usage_when_asked(gateway: GatewayInstance, route: str) -> None:
    stream = gateway.client().chat.completions.with_raw_response.create(
        model=route, messages=HELLO, stream=True, stream_options={"include_usage": True})
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    record = gateway.wait_log(request_id)
    assert record["stream"] is True and record["status"] == 200
    assert record["prompt_tokens"] == last.usage.prompt_tokens
    assert record["completion_tokens"] == last.usage.completion_tokens
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["latency_ms"]


async def test_async_stream(gateway: GatewayInstance) -> None:
    async with gateway.async_client() as client:
        stream = await client.chat.completions.create(model="claude", messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Mock answer to: hello there"


@pytest.mark.parametrize("route", ["chat", "claude", "demo"])
def test_streamed_tool_call_assembles(gateway: GatewayInstance, route: str) -> None:
    chunks = list(gateway.client().chat.completions.create(
        model=route, messages=HELLO, tools=[WEATHER_TOOL], stream=True))
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += d.id or ""
            slot["name"] += (d.function.name or "") if d.function else ""
            slot["arguments"] += (d.function.arguments or "") if d.function else ""
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "mock", "days": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_is_sse_on_the_wire(gateway: GatewayInstance) -> None:
    with gateway.http() as http, http.stream("POST", "/v1/chat/completions",
                                             json={"model": "chat", "messages": HELLO, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = b"".join(r.iter_bytes()).decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_stream_that_dies_midway_ends_with_an_error_event(gateway: GatewayInstance) -> None:
    content = 'cut me #mock{"fault": "cut:2"}'
    with gateway.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "chat", "stream": True, "messages": [{"role": "user", "content": content}]}) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        events = [e for e in b"".join(r.iter_bytes()).decode().split("\n\n") if e]
    assert "data: [DONE]" not in events
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["type"] == "api_error" and "stream" in error["message"]
    record = gateway.wait_log(request_id)
    assert record["error"]["type"] in ("UpstreamBadResponse", "UpstreamUnavailable")


def test_client_disconnect_cancels_the_upstream_call(gateway: GatewayInstance, upstream_log) -> None:
    """A client that gives up while the provider is still thinking frees the upstream connection."""
    content = 'hang #mock{"fault": "hang"}'
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout), gateway.http(timeout=1.0) as http:
        http.post("/v1/chat/completions", json={
            "model": "chat", "stream": True, "messages": [{"role": "user", "content": content}]},
            headers={"x-request-id": "disconnect-test-1"})
    record = gateway.wait_log("disconnect-test-1", timeout=3)
    assert record["client_disconnected"] is True and record["status"] == 499
    # the gateway noticed at once, not at the provider's 5 s timeout
    assert record["latency_ms"] < 3000 and time.monotonic() - started < 4


@pytest.mark.parametrize("route", ["chat", "azure", "claude"])
@pytest.mark.parametrize("style", ["compact", "pretty"])
def test_a_provider_that_pretty_prints_its_json_streams_like_one_that_does_not(
        gateway: GatewayInstance, route: str, style: str) -> None:
    # `"finish_reason" : "stop"`, one key a `data:` line, as Jackson's pretty printer writes it: read
    # by fixed-spacing substrings, every such stream ended as unfinished and its usage went unread.
    content = f'hello there #mock{{"json": "{style}"}}'
    messages = [{"role": "user", "content": content}]
    plain = gateway.client().chat.completions.create(model=route, messages=messages)
    assert plain.choices[0].message.content == "Mock answer to: " + content and plain.usage is not None
    stream = gateway.client().chat.completions.with_raw_response.create(
        model=route, messages=messages, stream=True, stream_options={"include_usage": True})
    chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == \
        (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    record = gateway.wait_log(stream.headers["x-request-id"])
    assert (record["status"], record["finish_reason"], record["usage_reported"], record["completion_tokens"],
            record["model_served"]) == (200, "stop", True, usage.completion_tokens, plain.model)
