"""Deterministic answers in OpenAI's shapes (and, re-exported, Anthropic's).

Used by the mock upstream server and, in-process, by the gateway's `mock` provider. Every
function returns fresh dicts, so callers may mutate what they get.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson

from gateway.limits.completion import MAX_CHOICES
from gateway.limits.tokens import count_messages, count_text, encoding_for_model
from gateway.mock_upstream.anthropic_answers import anthropic_events, anthropic_message
from gateway.mock_upstream.core import (
    CACHED_BODY_BYTES,
    Refused,
    Reply,
    as_list,
    as_map,
    block_text,
    digest_of,
    encoded_body,
    json_fragments,
    last_user_text,
    pieces,
    plan,
    stops_of,
)

__all__ = [
    "anthropic_events",
    "anthropic_message",
    "chat_chunks",
    "chat_completion",
    "check_choices",
    "embeddings_response",
]

# OpenAI's largest embedding (text-embedding-3-large) has 3072 dimensions; the mock allows a little more.
MAX_DIMENSIONS = 4096
_FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls", "stop_sequence": "stop"}
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=4096)
def _cached(digest: str, model: str, key: bytes) -> tuple[Reply, int]:
    # Keyed by the request digest; `key` carries the body so a load test repeating one body
    # pays for token counting once.
    return _compute(orjson.loads(key), model, digest)


def _compute(body: dict[str, Any], model: str, digest: str) -> tuple[Reply, int]:
    messages = as_list(body.get("messages"))
    last = messages[-1] if messages and isinstance(messages[-1], Mapping) else {}
    tool_result = block_text(last.get("content")) if last.get("role") == "tool" else None
    tools = [t["function"] for t in as_list(body.get("tools"))
             if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
             and isinstance(t["function"].get("name"), str)]
    choice = body.get("tool_choice", "auto")
    tool = None
    if tools and choice != "none" and tool_result is None:
        tool = tools[0]
        if isinstance(choice, Mapping):
            wanted = as_map(choice.get("function")).get("name")
            tool = next((t for t in tools if t["name"] == wanted), tools[0])
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    reply = plan(
        digest=digest, model=model, user_text=last_user_text(body), tool_result=tool_result,
        tool=(tool["name"], tool.get("parameters")) if tool else None,
        max_tokens=max_tokens, stops=stops_of(body.get("stop")),
    )
    prompt = count_messages([m for m in messages if isinstance(m, Mapping)], model)
    if body.get("tools"):
        prompt += count_text(orjson.dumps(body["tools"]).decode(), model)
    return reply, prompt


def _reply(body: dict[str, Any], model: str) -> tuple[Reply, int]:
    key = encoded_body(body)  # first: a body too deep to encode is refused before anything walks it
    digest = digest_of(body, "openai:" + model)
    if len(key) > CACHED_BODY_BYTES:  # the cache keeps its keys: large bodies are answered uncached
        return _compute(body, model, digest)
    return _cached(digest, model, key)


def _n(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CHOICES else 1


def check_choices(body: Mapping[str, Any]) -> None:
    """Raises ValueError, in OpenAI's words, for an `n` OpenAI refuses (not an integer in 1..128):
    every choice is generated and billed, so a mock that quietly served one would hide a gateway
    that forwards what the provider would refuse."""
    n = body.get("n")
    if n is None:
        return
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"Invalid type for 'n': expected an integer, but got {type(n).__name__} instead.")
    if n < 1:
        raise ValueError(f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} instead.")
    if n > MAX_CHOICES:
        raise ValueError(f"Invalid 'n': integer above maximum value. Expected a value <= {MAX_CHOICES}, "
                         f"but got {n} instead.")


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _tool_call(reply: Reply) -> dict[str, Any]:
    return {"id": "call_" + reply.digest, "type": "function",
            "function": {"name": reply.tool_name, "arguments": reply.tool_args}}


def _message(reply: Reply) -> dict[str, Any]:
    if reply.is_tool:
        return {"role": "assistant", "content": None, "tool_calls": [_tool_call(reply)],
                "refusal": None, "annotations": []}
    return {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}


def chat_completion(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    reply, prompt = _reply(body, model)
    n = _n(body)
    return {
        "id": "chatcmpl-" + reply.digest,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "message": _message(reply), "logprobs": None,
                     "finish_reason": _FINISH[reply.finish]} for i in range(n)],
        "usage": _usage(prompt, reply.completion_tokens * n),
        "service_tier": "default",
        "system_fingerprint": "mock",
    }


def chat_chunks(body: dict[str, Any], *, model: str, include_usage: bool) -> list[dict[str, Any]]:
    reply, prompt = _reply(body, model)
    n = _n(body)
    created = int(time.time())
    base: dict[str, Any] = {"id": "chatcmpl-" + reply.digest, "object": "chat.completion.chunk",
                            "created": created, "model": model, "service_tier": "default",
                            "system_fingerprint": "mock"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    chunks: list[dict[str, Any]] = []
    for i in range(n):
        if reply.is_tool:
            call = _tool_call(reply)
            call["function"]["arguments"] = ""
            chunks.append(chunk(i, {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}],
                                    "refusal": None}))
            chunks.extend(chunk(i, {"tool_calls": [{"index": 0, "function": {"arguments": frag}}]})
                          for frag in json_fragments(reply.tool_args or ""))
        else:
            chunks.append(chunk(i, {"role": "assistant", "content": "", "refusal": None}))
            chunks.extend(chunk(i, {"content": piece}) for piece in pieces(reply.text))
        chunks.append(chunk(i, {}, _FINISH[reply.finish]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(prompt, reply.completion_tokens * n)})
    return chunks


@lru_cache(maxsize=65536)
def _vector(text: str, dims: int) -> tuple[float, ...]:
    # Hashed bag of words plus a whole-text component: the same text always gets the same
    # vector, any change moves it, and texts sharing most words stay close, which is what a
    # semantic cache needs to be exercised.
    acc = [0.0] * dims
    features = [(w, 1.0) for w in _WORD.findall(text.lower())] + [("\0" + text, 0.5)]
    for feature, weight in features:
        raw = hashlib.shake_256(feature.encode()).digest(2 * dims)
        for i, (v,) in enumerate(struct.iter_unpack("<H", raw)):
            acc[i] += weight * (v / 32767.5 - 1.0)
    norm = sum(x * x for x in acc) ** 0.5 or 1.0
    return tuple(x / norm for x in acc)


def _embedding_inputs(value: Any) -> list[tuple[str, int | None]]:
    """(text to hash, token count if already tokens) per input, for every input form OpenAI takes."""
    if isinstance(value, str):
        return [(value, None)]
    if isinstance(value, list) and value and all(isinstance(x, int) for x in value):
        return [(orjson.dumps(value).decode(), len(value))]
    if isinstance(value, list):
        out: list[tuple[str, int | None]] = []
        for item in value:
            if isinstance(item, str):
                out.append((item, None))
            elif isinstance(item, list):
                out.append((orjson.dumps(item).decode(), len(item)))
            else:
                raise ValueError("input items must be strings or token arrays")
        return out
    raise ValueError("input must be a string, a list of strings, or token arrays")


def embeddings_response(body: dict[str, Any], *, model: str, dims: int = 64) -> dict[str, Any]:
    """Raises ValueError for an input OpenAI would reject."""
    inputs = _embedding_inputs(body.get("input"))
    if not inputs:
        raise ValueError("input must not be empty")
    requested = body.get("dimensions")
    size = requested if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0 else dims
    if size > MAX_DIMENSIONS:
        raise Refused(f"Invalid 'dimensions': integer above maximum value. Expected a value <= {MAX_DIMENSIONS}, "
                      f"but got {size} instead.", param="dimensions", code="integer_above_max_value")
    as_base64 = body.get("encoding_format") == "base64"
    enc = encoding_for_model(model)
    data, tokens = [], 0
    for index, (text, count) in enumerate(inputs):
        vector = _vector(text, size)
        tokens += count if count is not None else len(enc.encode(text, disallowed_special=()))
        embedding: Any = (base64.b64encode(struct.pack(f"<{size}f", *vector)).decode() if as_base64
                          else list(vector))
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
