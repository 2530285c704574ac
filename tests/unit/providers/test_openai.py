from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.errors import UpstreamBadResponse, UpstreamError, UpstreamRateLimited
from gateway.providers.azure_openai import AzureOpenAIDialect
from gateway.providers.base import served_model_name
from gateway.providers.http import MAX_EVENT_LINE_BYTES, HttpProvider
from gateway.providers.openai import OpenAIDialect, OpenAIStreamTranslator
from gateway.settings import ProviderSettings

OPENAI = ProviderSettings.model_validate({"kind": "openai", "base_url": "https://api.example/v1/", "api_key": "sk-x"})
AZURE = ProviderSettings.model_validate({"kind": "azure-openai", "base_url": "https://az.example",
                                         "api_key": "k", "api_version": "2024-10-21"})


def _chunk(**kw: object) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024", **kw})


def test_openai_request_is_the_clients_with_the_target_model() -> None:
    d = OpenAIDialect()
    body = {"model": "route", "messages": [], "seed": 1, "stream": True}
    out = d.encode_chat(body, "gpt-4o-mini", OPENAI)
    assert out["model"] == "gpt-4o-mini" and out["seed"] == 1
    assert out["stream_options"] == {"include_usage": True}
    assert body["model"] == "route"  # the client's body is not mutated
    assert d.chat_url(OPENAI, "m") == "https://api.example/v1/chat/completions"
    assert d.auth_headers(OPENAI) == {"authorization": "Bearer sk-x"}


def test_azure_urls_and_headers() -> None:
    d = AzureOpenAIDialect()
    assert d.chat_url(AZURE, "my dep") == \
        "https://az.example/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"
    assert d.embeddings_url(AZURE, "e") == "https://az.example/openai/deployments/e/embeddings?api-version=2024-10-21"
    assert d.auth_headers(AZURE) == {"api-key": "k"}
    assert "model" not in d.encode_chat({"model": "r", "messages": []}, "dep", AZURE)


def test_decode_relays_bytes_and_reads_usage() -> None:
    raw = orjson.dumps({"id": "x", "model": "m-1", "choices": [{"finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                                  "prompt_tokens_details": {"cached_tokens": 2}}})
    result = OpenAIDialect().decode_chat(raw, "m")
    assert result.body is raw
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens) == (5, 7, 2)
    assert result.usage.reported and result.served_model == "m-1" and result.finish_reason == "stop"
    for bad in (b"nope", b"[]", b'{"id": 1}'):
        with pytest.raises(UpstreamBadResponse):
            OpenAIDialect().decode_chat(bad, "m")


@pytest.mark.parametrize("usage", [{"prompt_tokens": "5"}, {"completion_tokens": -1}, {"prompt_tokens": 1.5},
                                   {"prompt_tokens": 2**41}, {"prompt_tokens": True},
                                   {"prompt_tokens_details": {"cached_tokens": [1]}}])
def test_impossible_usage_is_a_bad_answer_not_a_crash(usage: dict[str, object]) -> None:
    raw = orjson.dumps({"id": "x", "model": "m", "choices": [{"finish_reason": "stop"}], "usage": usage})
    with pytest.raises(UpstreamBadResponse, match="impossible usage"):
        OpenAIDialect().decode_chat(raw, "m")


def test_whole_float_counts_and_absent_details_are_read() -> None:
    raw = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 5.0, "completion_tokens": 0,
                                                 "prompt_tokens_details": None}})
    usage = OpenAIDialect().decode_chat(raw, "m").usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reported) == (5, 0, 0, True)


def test_stream_translator_hides_usage_chunk_unless_asked() -> None:
    chunks = [
        _chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}], usage=None),
        _chunk(choices=[{"index": 0, "delta": {"content": "hi"}}], usage=None),
        _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=None),
        _chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 1}),
    ]
    for include in (False, True):
        t = OpenAIStreamTranslator(include)
        out = [p for c in chunks for p in t.feed(None, c)] + t.feed(None, b"[DONE]") + t.finish()
        assert out == (chunks if include else chunks[:3])
        assert out[0] is chunks[0]  # relayed as received, never re-serialised
        assert t.usage.prompt_tokens == 3 and t.usage.completion_tokens == 1 and t.usage.reported
        assert t.finish_reason == "stop" and t.served_model == "gpt-4o-mini-2024"


# How servers space their JSON: compact (OpenAI, orjson), Python's json.dumps default, Jackson's
# pretty printer (`"key" : value`, one key a line), and every JSON whitespace in odd places.
SPACINGS = {
    "compact": {"separators": (",", ":")},
    "python": {},
    "jackson": {"indent": 2, "separators": (",", " : ")},
    "odd": {"indent": "\t", "separators": (" ,\r\n", "\n:\t ")},
}


@pytest.mark.parametrize("spacing", SPACINGS)
def test_stream_translator_reads_chunks_spaced_any_way(spacing: str) -> None:
    def spaced(**kw: object) -> bytes:
        obj = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024", **kw}
        return json.dumps(obj, **SPACINGS[spacing]).encode()  # type: ignore[arg-type]

    chunks = [
        spaced(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
               usage=None),
        spaced(choices=[{"index": 0, "delta": {"content": "usage"}, "finish_reason": None}], usage=None),
        spaced(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}], usage=None),
        spaced(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 1}),
    ]
    for include in (False, True):
        t = OpenAIStreamTranslator(include)
        out = [p for c in chunks for p in t.feed(None, c)]
        assert out == (chunks if include else chunks[:3])
        assert (t.finish_reason, t.served_model, t.usage.completion_tokens) == ("length", "gpt-4o-mini-2024", 1)
        assert t.usage.reported
    error = json.dumps({"error": {"message": "boom", "code": "x"}}, **SPACINGS[spacing]).encode()  # type: ignore[arg-type]
    with pytest.raises(UpstreamError, match="boom"):
        OpenAIStreamTranslator(False).feed(None, error)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_a_later_choice_finishing_is_seen_past_an_unfinished_one(spacing: str) -> None:
    choices = [{"index": 0, "delta": {"content": "a"}, "finish_reason": None},
               {"index": 1, "delta": {}, "finish_reason": "stop"}]
    t = OpenAIStreamTranslator(False)
    t.feed(None, json.dumps({"id": "c", "model": "m", "choices": choices}, **SPACINGS[spacing]).encode())  # type: ignore[arg-type]
    assert t.finish_reason == "stop"


def test_content_that_reads_like_a_key_does_not_count() -> None:
    t = OpenAIStreamTranslator(True)
    t.feed(None, _chunk(choices=[]))  # the first chunk is parsed for the model anyway
    quoted = _chunk(choices=[{"index": 0, "delta": {"content": '"finish_reason": "stop", "usage": {}'},
                              "finish_reason": None}])
    assert t.feed(None, quoted) == [quoted]
    assert t.finish_reason is None and not t.usage.reported


def test_stream_translator_rejects_garbage() -> None:
    with pytest.raises(UpstreamBadResponse):
        OpenAIStreamTranslator(False).feed(None, b"{not json")


def test_error_message_parsing() -> None:
    d = OpenAIDialect()
    raw = orjson.dumps({"error": {"message": "bad thing", "param": "temperature", "code": "invalid_value"}})
    assert d.error_message(400, raw) == ("bad thing", "temperature", "invalid_value")
    assert d.error_message(500, b"<html>oops</html>") == ("the provider answered HTTP 500", None, None)


def test_an_error_event_mid_stream_becomes_the_gateways_scrubbed_error() -> None:
    t = OpenAIStreamTranslator(include_usage=False)
    first = b'{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}'
    assert t.feed(None, first) == [first]
    event = b'{"error": {"message": "boom sk-live-abcdefghijkl ' + b"w " * 5000 + b'", "code": "x"}}'
    with pytest.raises(UpstreamError) as info:
        t.feed(None, event)
    assert "sk-live" not in info.value.message and "[redacted]" in info.value.message
    assert len(info.value.message) < 1_100 and info.value.error_code == "upstream_error"
    # a chunk whose text merely says "error" is relayed as it is
    says = b'{"id":"c","choices":[{"index":0,"delta":{"content":"\\"error\\""}}]}'
    assert t.feed(None, says) == [says]


def test_served_model_names_are_scrubbed_and_bounded() -> None:
    assert served_model_name("gpt-4o-mini") == "gpt-4o-mini"
    assert served_model_name(None) is None and served_model_name({"a": 1}) is None
    long = served_model_name("gpt-sk-abcdefghijklmnop " + "m " * 100_000)
    assert long is not None and "sk-abc" not in long and len(long) < 300


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "7"}, {"retry-after": "7", "retry-after-ms": "7000"}),
    ({"retry-after-ms": "1500", "retry-after": "2"}, {"retry-after": "2", "retry-after-ms": "1500"}),
    ({"retry-after": "sk-x"}, {}),  # the provider's own key, quoted where a number belongs
    ({"retry-after": "Bearer sk-proj-0123456789abcdef"}, {}),
    ({"retry-after": "9" * 20}, {"retry-after": str(365 * 86400), "retry-after-ms": str(365 * 86400_000)}),
    ({"retry-after-ms": "nan", "retry-after": "-1"}, {}),
    ({}, {}),
])
def test_a_providers_retry_after_reaches_the_client_only_as_a_bounded_number(
        headers: dict[str, str], expected: dict[str, str]) -> None:
    provider = HttpProvider("up", OPENAI, OpenAIDialect())
    with pytest.raises(UpstreamRateLimited) as info:
        provider._raise_for(429, b'{"error": {"message": "slow down"}}', headers)
    assert info.value.headers == expected


class _Chunks:
    """A provider's streamed answer, as the transport hands it over: these chunks, then the end."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = self.released = False

    async def iter_chunks(self, idle_timeout_s: float | None) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.released = True


async def _relayed(chunks: list[bytes]) -> tuple[list[bytes], _Chunks]:
    provider = HttpProvider("up", OPENAI, OpenAIDialect())
    resp = _Chunks(chunks)
    translator = OpenAIDialect().stream_translator("gpt-4o-mini", False)
    out = [piece async for piece in provider._relay(resp, translator, 5.0)]  # type: ignore[arg-type]
    return out, resp


async def test_stream_lines_split_over_chunks_are_joined() -> None:
    events = b"".join(b"data: " + _chunk(choices=[{"index": 0, "delta": {"content": "ab" * 50}}]) + b"\r\n\r\n"
                      for _ in range(20))
    events += b"data: " + _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]) + b"\n\ndata: [DONE]\n\n"
    for size in (1, 7, 100, len(events)):
        out, resp = await _relayed([events[i:i + size] for i in range(0, len(events), size)])
        assert len(out) == 21 and resp.released, size


async def test_a_stream_line_past_the_bound_is_a_bad_answer_not_a_buffer() -> None:
    # One line of 64 MB in 64 KB chunks was joined chunk by chunk: seconds of the event loop, 350 MB.
    piece = b"A" * 65536
    chunks = [b"data: ", *[piece] * (MAX_EVENT_LINE_BYTES // len(piece) + 1)]
    started = time.monotonic()
    with pytest.raises(UpstreamBadResponse, match="line over"):
        await _relayed(chunks)
    assert time.monotonic() - started < 1.0
    with pytest.raises(UpstreamBadResponse, match="line over"):  # a long line after a newline, in one chunk
        await _relayed([b": comment\n" + b"B" * (MAX_EVENT_LINE_BYTES + 1)])


async def test_a_multi_line_data_field_reaches_the_client_as_one_line() -> None:
    # A server that pretty-prints sends each line of its JSON as its own `data:` line; relayed
    # with the newlines SSE joins them by, the chunk would end the client's `data:` field early.
    body = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    lines = json.dumps(body, indent=2, separators=(",", " : ")).encode().split(b"\n")
    event = b"".join(b"data: " + line + b"\n" for line in lines) + b"\ndata: [DONE]\n\n"
    out, resp = await _relayed([event])
    assert len(out) == 1 and b"\n" not in out[0] and orjson.loads(out[0]) == body and resp.released
