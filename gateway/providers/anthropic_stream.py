"""Anthropic Messages stream events -> OpenAI `chat.completion.chunk` payloads.

Also home of what the streaming and non-streaming decoders share (stop-reason and usage
mapping, upstream error classes), so `anthropic.py` imports from here and not the reverse.

Event handling (https://docs.anthropic.com/en/api/messages-streaming):
- `message_start` opens the OpenAI stream with `delta {role: assistant, content: ""}` and
  reports the input side of usage;
- a `tool_use` block start announces a tool call; OpenAI numbers tool calls 0, 1, ... in the
  order they appear, so the k-th tool_use block is `index: k` whatever its block index is;
- `text_delta` and `input_json_delta` become content and argument fragments; deltas of blocks
  the client cannot see (thinking, server tools) are dropped;
- `message_delta` carries the stop reason and the cumulative output token count;
- `error` raises the matching `UpstreamError` so the engine ends the stream the way it ends
  any upstream failure. Unknown event types are ignored: Anthropic adds event types over time.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)
from gateway.providers.base import Usage, reported_tokens, served_model_name

_FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A paused server-tool turn is a complete answer as far as an OpenAI client can tell.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_ERROR_CLASSES: dict[str, type[UpstreamError]] = {
    "overloaded_error": UpstreamUnavailable,
    "api_error": UpstreamError,
    "rate_limit_error": UpstreamRateLimited,
    "timeout_error": UpstreamTimeout,
    "authentication_error": UpstreamAuthFailed,
    "permission_error": UpstreamAuthFailed,
    "billing_error": UpstreamAuthFailed,
    "invalid_request_error": UpstreamRejected,
    "not_found_error": UpstreamRejected,
    "request_too_large": UpstreamRejected,
}


def finish_reason_for(stop_reason: Any) -> str:
    # An unknown future stop reason still ended the turn; "stop" is the least surprising.
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(raw: dict[str, Any], key: str) -> int:
    return reported_tokens(raw, key)


def update_usage(usage: Usage, raw: dict[str, Any]) -> None:
    """Fold an Anthropic usage object into `usage`.

    Anthropic counts cache reads (`cache_read_input_tokens`) and writes (`cache_creation_input_tokens`)
    apart from `input_tokens`; OpenAI's prompt_tokens includes cached tokens, so all three are
    summed, and the reads and writes are kept apart for pricing. Writes are split by lifetime in
    `cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`; without that split
    they are taken as 5-minute writes (Anthropic's default lifetime). When the split adds up to
    more than the total, the larger is billed. Counts are cumulative (message_start, then
    message_delta), so a key that is present replaces the previous value and a missing or null
    key leaves it alone.
    """
    fresh = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    if raw.get("input_tokens") is not None:
        fresh = _count(raw, "input_tokens")
    if raw.get("cache_read_input_tokens") is not None:
        usage.cached_tokens = _count(raw, "cache_read_input_tokens")
    if raw.get("cache_creation_input_tokens") is not None:
        usage.cache_write_tokens = _count(raw, "cache_creation_input_tokens")
    split = raw.get("cache_creation")
    if split is not None:
        if not isinstance(split, dict):
            raise UpstreamBadResponse("the provider reported an impossible usage.cache_creation")
        written_1h = _count(split, "ephemeral_1h_input_tokens")
        written = _count(split, "ephemeral_5m_input_tokens") + written_1h
        usage.cache_write_tokens = max(usage.cache_write_tokens, written)
        usage.cache_write_1h_tokens = written_1h
    if usage.cache_write_1h_tokens > usage.cache_write_tokens:
        usage.cache_write_1h_tokens = usage.cache_write_tokens
    usage.prompt_tokens = fresh + usage.cached_tokens + usage.cache_write_tokens
    if raw.get("output_tokens") is not None:
        usage.completion_tokens = _count(raw, "output_tokens")
    usage.reported = True


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def upstream_error(error_type: str | None, message: str) -> UpstreamError:
    cls = _ERROR_CLASSES.get(error_type or "", UpstreamError)
    text = scrub(f"Anthropic error ({error_type or 'unknown'}): {message}")
    return cls(text)


def _stream_error(err: Any) -> UpstreamError:
    err = err if isinstance(err, dict) else {}
    error_type = err.get("type")
    message = err.get("message")
    return upstream_error(
        error_type if isinstance(error_type, str) else None,
        message if isinstance(message, str) else "the stream failed",
    )


def _loads_object(data: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("Anthropic sent a stream event that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamBadResponse("Anthropic sent a stream event that is not a JSON object")
    return obj


class AnthropicStreamTranslator:
    """One per upstream stream; implements `gateway.providers.base.StreamTranslator`."""

    def __init__(self, requested_model: str, include_usage: bool) -> None:
        self.usage = Usage()
        self.served_model: str | None = None
        self.finish_reason: str | None = None
        self._include_usage = include_usage
        self._model = requested_model
        self._id = ""
        self._created = int(time.time())
        self._started = False
        # Anthropic content-block index -> OpenAI tool-call index, for tool_use blocks only.
        self._tool_index: dict[int, int] = {}

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if not data.strip():
            return []
        obj = _loads_object(data)
        kind = obj.get("type", event)
        if kind == "message_start":
            return self._on_message_start(obj)
        if kind == "content_block_start":
            return self._on_block_start(obj)
        if kind == "content_block_delta":
            return self._on_block_delta(obj)
        if kind == "message_delta":
            return self._on_message_delta(obj)
        if kind == "error":
            raise _stream_error(obj.get("error"))
        return []  # ping, content_block_stop, message_stop and event types added later

    def finish(self) -> list[bytes]:
        if not (self._include_usage and self._started):
            return []
        return [self._payload([], usage=openai_usage(self.usage))]

    def _on_message_start(self, obj: dict[str, Any]) -> list[bytes]:
        message = obj.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            raise UpstreamBadResponse("Anthropic message_start without a message id")
        self._id = message["id"]
        served = served_model_name(message.get("model"))
        if served is not None:
            self._model = self.served_model = served
        if isinstance(message.get("usage"), dict):
            update_usage(self.usage, message["usage"])
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_block_start(self, obj: dict[str, Any]) -> list[bytes]:
        block = obj.get("content_block")
        index = obj.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            raise UpstreamBadResponse("Anthropic content_block_start without a block or index")
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        k = self._tool_index[index] = len(self._tool_index)
        call = {
            "index": k,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _on_block_delta(self, obj: dict[str, Any]) -> list[bytes]:
        delta = obj.get("delta")
        if not isinstance(delta, dict):
            raise UpstreamBadResponse("Anthropic content_block_delta without a delta")
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return [self._chunk({"content": delta["text"]})]
        index = obj.get("index")
        k = self._tool_index.get(index) if isinstance(index, int) else None
        fragment = delta.get("partial_json")
        # Anthropic opens each tool input with an empty fragment; it carries nothing.
        if kind == "input_json_delta" and k is not None and isinstance(fragment, str) and fragment:
            return [self._chunk({"tool_calls": [{"index": k, "function": {"arguments": fragment}}]})]
        return []

    def _on_message_delta(self, obj: dict[str, Any]) -> list[bytes]:
        if isinstance(obj.get("usage"), dict):
            update_usage(self.usage, obj["usage"])
        delta = obj.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        self.finish_reason = finish_reason_for(stop_reason)
        return [self._chunk({}, finish_reason=self.finish_reason)]

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._payload([choice])

    def _payload(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            payload["usage"] = usage
        return orjson.dumps(payload)
