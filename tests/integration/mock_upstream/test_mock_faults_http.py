"""Every fault kind as a real client sees it over a real connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import orjson
import pytest

from tests.support.processes import RunningProcess

CHAT = "/v1/chat/completions"
MESSAGES: Any = [{"role": "user", "content": "Count from one to twenty, slowly and clearly."}]
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


def _directive(directive: str) -> Any:
    return [{"role": "user", "content": f"Please answer. #mock{directive}"}]


def _last(http: httpx.Client) -> dict[str, Any]:
    entries: list[dict[str, Any]] = http.get("/_mock/requests").json()
    return entries[-1]


def _sse_payloads(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def test_status_with_retry_after_by_header(http: httpx.Client) -> None:
    out = http.post(CHAT, json=BODY, headers={"x-mock-status": "429", "x-mock-retry-after": "1.5"})
    assert out.status_code == 429
    assert (out.headers["retry-after"], out.headers["retry-after-ms"]) == ("2", "1500")
    assert out.json()["error"]["code"] == "rate_limit_exceeded"
    entry = _last(http)
    assert entry["status"] == 429
    assert entry["fault"] == {"kind": "status", "status": 429, "retry_after_s": 1.5, "source": "header"}


def test_status_by_directive_through_the_sdks(mock: RunningProcess) -> None:
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as rate:
        client.chat.completions.create(model="gpt-4o", messages=_directive('{"status": 429, "retry_after": 2}'))
    assert rate.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="gpt-4o", messages=_directive('{"status": 503}'))
    assert err.value.status_code == 503
    claude = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as over:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=_directive('{"status": 529}'))
    assert over.value.status_code == 529
    assert over.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                               "request_id": over.value.response.headers["request-id"]}


def test_directive_in_azure_bodies(http: httpx.Client) -> None:
    out = http.post("/openai/deployments/d/chat/completions", params={"api-version": "2024-10-21"},
                    json={"messages": _directive('{"status": 500}')})
    assert out.status_code == 500 and out.json()["error"]["code"] == "500"


def test_bad_directive_is_a_400(http: httpx.Client) -> None:
    out = http.post(CHAT, json={"model": "gpt-4o", "messages": _directive('{"fault": "explode"}')})
    assert out.status_code == 400 and "explode" in out.json()["error"]["message"]


def test_hang_until_the_client_gives_up(http: httpx.Client) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post(CHAT, json=BODY, headers={"x-mock-fault": "hang"}, timeout=0.5)
    assert time.monotonic() - started < 3
    impatient = openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="x", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="gpt-4o", messages=_directive('{"fault": "hang"}'))
    entry = _last(http)
    assert entry["fault"]["kind"] == "hang" and entry["status"] is None
    assert http.post(CHAT, json=BODY).status_code == 200  # the server is fine


def test_reset_is_a_connection_error_not_a_status(http: httpx.Client, mock: RunningProcess) -> None:
    with pytest.raises(httpx.TransportError) as caught:
        http.post(CHAT, json=BODY, headers={"x-mock-fault": "reset"})
    assert not isinstance(caught.value, httpx.TimeoutException)
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=_directive('{"fault": "reset"}'))
    entry = _last(http)
    assert entry["fault"]["kind"] == "reset" and entry["status"] is None


async def test_reset_seen_by_aiohttp(mock: RunningProcess) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(mock.url + CHAT, json=BODY, headers={"x-mock-fault": "reset"}) as resp:
                await resp.read()
        async with session.post(mock.url + CHAT, json=BODY) as resp:
            assert resp.status == 200


def test_malformed_bodies(http: httpx.Client) -> None:
    plain = http.post(CHAT, json=BODY, headers={"x-mock-fault": "malformed"})
    assert plain.status_code == 200
    with pytest.raises(ValueError):
        orjson.loads(plain.content)
    stream = http.post(CHAT, json={**BODY, "stream": True}, headers={"x-mock-fault": "malformed"})
    payloads = _sse_payloads(stream.text)
    assert payloads[-1] == "[DONE]"
    with pytest.raises(ValueError):
        [orjson.loads(p) for p in payloads[:-1]]
    emb = http.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers={"x-mock-fault": "malformed"})
    with pytest.raises(ValueError):
        orjson.loads(emb.content)
    messages = http.post("/v1/messages", json={"model": "c", "max_tokens": 9, "messages": MESSAGES, "stream": True},
                         headers={**ANTHROPIC_HEADERS, "x-mock-fault": "malformed"})
    with pytest.raises(ValueError):
        [orjson.loads(p) for p in _sse_payloads(messages.text)]


def test_pretty_json_by_directive_is_what_the_sdks_read(mock: RunningProcess, http: httpx.Client) -> None:
    pretty = _directive('{"json": "pretty"}')
    out = http.post(CHAT, json={"model": "gpt-4o", "messages": pretty, "stream": True})
    assert '"finish_reason" : "stop"' in out.text and "\ndata:   " in out.text  # one key a data: line
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=pretty, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        client.chat.completions.create(model="gpt-4o", messages=pretty).choices[0].message.content
    claude = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=pretty) as stream:
        assert stream.get_final_message().stop_reason == "end_turn"


def test_stream_cut_after_n_chunks(http: httpx.Client) -> None:
    received = []
    with pytest.raises(httpx.RemoteProtocolError):  # the error comes while reading
        with http.stream("POST", CHAT, json={**BODY, "stream": True}, headers={"x-mock-fault": "cut:3"}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    received.append(line[6:])
    assert len(received) == 3 and "[DONE]" not in received
    entry = _last(http)
    assert entry["fault"] == {"kind": "cut", "cut_after": 3, "source": "header"} and entry["status"] == 200


def test_anthropic_stream_cut_breaks_the_sdk(mock: RunningProcess) -> None:
    claude = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    # The SDK lets its HTTP library's error through mid-stream (its own vendored httpx2).
    with pytest.raises(Exception) as caught:
        with claude.messages.stream(model="c", max_tokens=50, messages=_directive('{"fault": "cut:4"}')) as s:
            s.get_final_message()
    assert isinstance(caught.value, anthropic.APIConnectionError) or "incomplete chunked read" in str(caught.value)


def test_latency(http: httpx.Client) -> None:
    started = time.monotonic()
    assert http.post(CHAT, json=BODY, headers={"x-mock-latency-ms": "300"}).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert _last(http)["fault"] == {"latency_ms": 300.0, "source": "header"}


async def test_chunk_delay_spreads_the_stream(mock: RunningProcess) -> None:
    arrivals = []
    async with httpx.AsyncClient(base_url=mock.url, timeout=10) as client:
        started = time.monotonic()
        async with client.stream("POST", CHAT, json={**BODY, "stream": True},
                                 headers={"x-mock-chunk-delay-ms": "40"}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - started)
    assert arrivals[0] < 0.2 and arrivals[-1] - arrivals[0] > 0.2


async def test_concurrent_hangs_do_not_block_others(mock: RunningProcess) -> None:
    async with httpx.AsyncClient(base_url=mock.url, timeout=5) as client:
        async def hang() -> None:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(CHAT, json=BODY, headers={"x-mock-fault": "hang"}, timeout=0.8)

        hangs = [asyncio.create_task(hang()) for _ in range(5)]
        await asyncio.sleep(0.1)
        ok = await client.post(CHAT, json=BODY)
        assert ok.status_code == 200
        await asyncio.gather(*hangs)
