"""The OpenAI dialect: OpenAI itself and every OpenAI-compatible server (vLLM, Ollama, Groq, ...).

Requests pass through as the client sent them (only `model` is replaced), and responses are
relayed byte for byte: the gateway parses a response only to read its usage, and a stream only
where a chunk carries usage, a finish reason or the served model.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import UpstreamBadResponse, UpstreamError, scrub
from gateway.providers.base import ChatResult, Dialect, EmbeddingsResult, Usage, reported_tokens, served_model_name
from gateway.settings import ProviderSettings


def usage_from_openai(obj: Any) -> Usage:
    """The usage an OpenAI-shaped answer reports; a count that is not a whole number of tokens is
    a broken answer (502), never a 500 or a negative spend."""
    if not isinstance(obj, dict):
        return Usage()
    details = obj.get("prompt_tokens_details")
    return Usage(
        prompt_tokens=reported_tokens(obj, "prompt_tokens"),
        completion_tokens=reported_tokens(obj, "completion_tokens"),
        cached_tokens=reported_tokens(details, "cached_tokens") if isinstance(details, dict) else 0,
        reported=True,
    )


def stream_error(err: Any) -> UpstreamError:
    """The gateway's own error for an upstream's mid-stream error event, its message scrubbed and bounded."""
    message = err.get("message") if isinstance(err, dict) else err
    text = message if isinstance(message, str) else "no message"
    return UpstreamError(scrub(f"the provider failed mid-stream: {text}"))


# What follows a key when its value may matter, in any JSON spacing: the compact `"key":v` is
# checked by a two-byte compare, these only run for a server that spaces its JSON otherwise.
_SPACED_STRING = re.compile(rb"\s*:\s*\"")
_SPACED_OBJECT = re.compile(rb"\s*:\s*\{")
_SPACED_ERROR = re.compile(rb"\s*\{\s*\"error\"\s*:")


class OpenAIStreamTranslator:
    """Relays OpenAI chunks unchanged, looking inside only the few that matter.

    A chunk is parsed only when it may carry a finish reason (`"finish_reason"` with a string
    value), usage (`"usage"` with an object value) or an error, or is the first (the served
    model). Those are found by their keys and the byte after the colon, whatever whitespace the
    server puts around it (compact, `"key": v`, `"key" : v`, one key a line): a server that spaces
    its JSON otherwise than OpenAI must not end every stream as unfinished or go unbilled.
    """

    __slots__ = ("finish_reason", "include_usage", "served_model", "usage")

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage = Usage()
        self.served_model: str | None = None
        self.finish_reason: str | None = None

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if data == b"[DONE]" or not data:
            return []
        # Most chunks are plain deltas with `"finish_reason":null` (and `"usage":null` when usage
        # was asked for): one find per key and a two-byte compare tell them apart, no parse.
        has_finish = False
        if self.finish_reason is None:
            at = data.find(b'"finish_reason"')
            while at >= 0:  # one per choice in the chunk
                at += 15
                after = data[at:at + 2]
                if after == b':"' or (after != b":n" and _SPACED_STRING.match(data, at) is not None):
                    has_finish = True
                    break
                at = data.find(b'"finish_reason"', at)
        has_usage = False
        at = data.find(b'"usage"')
        while at >= 0:  # a string "usage" (a content of that one word) may come before the key
            at += 7
            after = data[at:at + 2]
            if after == b":n":  # the key itself, null
                break
            if after == b":{" or _SPACED_OBJECT.match(data, at) is not None:
                has_usage = True
                break
            at = data.find(b'"usage"', at)
        # An OpenAI-compatible server reports a failure after its 200 as an event `{"error": {...}}`:
        # it is not relayed as it came (it may quote credentials), it ends the stream as a failure.
        is_error = b'"error"' in data[:16] or (data[1:2] != b'"' and _SPACED_ERROR.match(data) is not None)
        if self.served_model is None or has_usage or has_finish or is_error:
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamBadResponse("the provider sent a malformed stream chunk") from None
            if not isinstance(chunk, dict):
                raise UpstreamBadResponse("the provider sent a malformed stream chunk")
            if is_error and "error" in chunk and not chunk.get("choices"):
                raise stream_error(chunk["error"])
            if self.served_model is None:
                self.served_model = served_model_name(chunk.get("model")) or ""
            if has_usage:
                self.usage = usage_from_openai(chunk.get("usage"))
                # The gateway asked for usage on the client's behalf; a client that did not ask
                # does not get the extra usage-only chunk.
                if not self.include_usage and not chunk.get("choices"):
                    return []
            if has_finish:
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
        return [data]

    def finish(self) -> list[bytes]:
        return []


class OpenAIDialect(Dialect):
    def chat_url(self, settings: ProviderSettings, model: str) -> str:
        return f"{(settings.base_url or '').rstrip('/')}/chat/completions"

    def embeddings_url(self, settings: ProviderSettings, model: str) -> str | None:
        return f"{(settings.base_url or '').rstrip('/')}/embeddings"

    def auth_headers(self, settings: ProviderSettings) -> dict[str, str]:
        return {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    def encode_chat(self, body: dict[str, Any], model: str, settings: ProviderSettings) -> dict[str, Any]:
        out = {**body, "model": model}
        if body.get("stream") and settings.stream_usage:
            out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return out

    def decode_chat(self, raw: bytes, requested_model: str) -> ChatResult:
        data = _parse_object(raw)
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise UpstreamBadResponse("the provider's answer has no choices")
        finish = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
        return ChatResult(body=raw, usage=usage_from_openai(data.get("usage")),
                          served_model=served_model_name(data.get("model")), finish_reason=finish)

    def stream_translator(self, requested_model: str, include_usage: bool) -> OpenAIStreamTranslator:
        return OpenAIStreamTranslator(include_usage)

    def decode_embeddings(self, raw: bytes, requested_model: str) -> EmbeddingsResult:
        data = _parse_object(raw)
        if not isinstance(data.get("data"), list):
            raise UpstreamBadResponse("the provider's embeddings answer has no data")
        return EmbeddingsResult(body=raw, usage=usage_from_openai(data.get("usage")),
                                served_model=served_model_name(data.get("model")))

    def error_message(self, status: int, raw: bytes) -> tuple[str, str | None, str | None]:
        try:
            err = orjson.loads(raw).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            err = None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"], _opt_str(err.get("param")), _opt_str(err.get("code"))
        return f"the provider answered HTTP {status}", None, None


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("the provider sent a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamBadResponse("the provider sent an unexpected body")
    return data


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None
