"""The mock's OpenAI and Azure OpenAI faces, spoken to by the official `openai` SDK over loopback."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway.mock_upstream.answers import chat_completion, embeddings_response
from tests.support.processes import RunningProcess

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(mock: RunningProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0, timeout=10)


def test_chat(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    expected = chat_completion({"model": "gpt-4o-mini", "messages": MESSAGES}, model="gpt-4o-mini")
    assert out.id == expected["id"] and out.model == "gpt-4o-mini"
    assert out.choices[0].message.content == "Mock answer to: What is the capital of France?"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.model_dump()["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_")


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_streaming_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)


def test_tools_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER])
    assert first.choices[0].finish_reason == "tool_calls"
    call: Any = (first.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"mock"}'
    follow = [*MESSAGES, first.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}]
    second = client.chat.completions.create(model="gpt-4o", messages=follow, tools=[WEATHER])
    assert second.choices[0].message.content == "Tool said: Sunny"


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER], stream=True)
    args, names = "", []
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            if call.function and call.function.name:
                names.append(call.function.name)
            args += (call.function.arguments or "") if call.function else ""
    assert names == ["get_weather"] and args == '{"city":"mock"}'


def test_embeddings(client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it; the floats must match the float format.
    out = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    expected = embeddings_response({"input": ["hello", "world"]}, model="text-embedding-3-small")
    for got, want in zip(out.data, expected["data"], strict=True):
        assert got.embedding == pytest.approx(want["embedding"], abs=1e-6)
    plain = client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float")
    assert plain.data[0].embedding == pytest.approx(expected["data"][0]["embedding"], abs=1e-12)
    assert out.usage.prompt_tokens == expected["usage"]["prompt_tokens"]


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids


def test_bad_requests_use_openais_error_shape(http: httpx.Client) -> None:
    bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = http.post("/v1/chat/completions", json={"model": "gpt-4o"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    assert http.post("/v1/embeddings", json={"model": "m", "input": [{"x": 1}]}).status_code == 400


def test_azure_paths(mock: RunningProcess, http: httpx.Client) -> None:
    path = "/openai/deployments/my-deployment/chat/completions"
    out = http.post(path, params={"api-version": "2024-10-21"}, json={"messages": MESSAGES})
    assert out.status_code == 200 and out.json()["model"] == "my-deployment"
    missing = http.post(path, json={"messages": MESSAGES})
    assert missing.status_code == 400 and "api-version" in missing.json()["error"]["message"]
    emb = http.post("/openai/deployments/emb/embeddings", params={"api-version": "2024-10-21"}, json={"input": "x"})
    assert emb.status_code == 200 and emb.json()["model"] == "emb" and len(emb.json()["data"][0]["embedding"]) == 64
    azure = openai.AzureOpenAI(azure_endpoint=mock.url, api_key="x", api_version="2024-10-21", max_retries=0)
    answer = azure.chat.completions.create(model="my-deployment", messages=MESSAGES)
    assert answer.model == "my-deployment" and (answer.choices[0].message.content or "").startswith("Mock answer")
    entry = http.get("/_mock/requests").json()[-1]
    assert entry["path"] == path and entry["query"] == {"api-version": "2024-10-21"}
    assert entry["headers"]["api-key"] == "x"


def test_n_choices_each_up_to_max_tokens_with_usage_for_all(client: openai.OpenAI, http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "a question long enough to be cut by max_tokens"}]
    answer = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=3, n=5)  # type: ignore[arg-type]
    assert len(answer.choices) == 5 and all(c.finish_reason == "length" for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens == 5 * 3
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=3, n=5,  # type: ignore[arg-type]
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.choices[0].index for c in chunks if c.choices} == set(range(5))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15
    for n in (0, 129, True):  # what OpenAI refuses, the mock refuses
        r = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": messages, "n": n})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
