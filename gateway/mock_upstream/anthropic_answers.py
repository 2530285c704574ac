"""Deterministic answers in the Anthropic Messages API's shapes (same rules as the OpenAI face).

Prompt caching: a request with `cache_control` marks is answered as Anthropic answers the first
call of a cached prefix: the prompt up to the last marked block is a cache write
(`cache_creation_input_tokens`, split by lifetime in `cache_creation`: the prefix up to the last
mark with `ttl: "1h"` is kept for an hour, the rest for 5 minutes), and `input_tokens` is the rest
of the prompt. The mock keeps no state, so it never reports a cache read.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson

from gateway.limits.tokens import count_messages, count_text
from gateway.mock_upstream.core import (
    CACHED_BODY_BYTES,
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

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use", "stop_sequence": "stop_sequence"}


def _tool_result(messages: list[Any]) -> str | None:
    """The text of the tool result the last message answers with, if it is one."""
    last = messages[-1] if messages and isinstance(messages[-1], Mapping) else {}
    if last.get("role") != "user" or not isinstance(last.get("content"), list):
        return None
    results = [b for b in last["content"] if isinstance(b, Mapping) and b.get("type") == "tool_result"]
    if not results:
        return None
    return block_text(results[-1].get("content"))


def _flat(body: Mapping[str, Any], messages: list[Any]) -> list[dict[str, Any]]:
    """The conversation as OpenAI-style messages of plain text, for token counting."""
    out = []
    system = block_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        content = msg.get("content")
        parts = [content] if isinstance(content, str) else []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_use":
                parts.append(str(block.get("name", "")) + orjson.dumps(block.get("input", {})).decode())
            elif block.get("type") == "tool_result":
                parts.append(block_text(block.get("content")))
        out.append({"role": str(msg.get("role", "user")), "content": "".join(parts)})
    return out


def _one_block_text(block: Any) -> str:
    """The text one content block adds to the prompt, as `_flat` counts it."""
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return str(block["text"])
    if kind == "tool_use":
        return str(block.get("name", "")) + orjson.dumps(block.get("input", {})).decode()
    if kind == "tool_result":
        return block_text(block.get("content"))
    return ""


# Cache writes of one request: (5-minute, 1-hour) tokens, or None when nothing is marked.
Writes = tuple[int, int] | None


def _cache_writes(body: Mapping[str, Any], model: str, prompt: int) -> Writes:
    """The prefix written into the prompt cache, in Anthropic's order (tools, system, messages)."""
    texts: list[str] = []
    ends = {"5m": 0, "1h": 0}  # characters of the prefix up to the last mark of each lifetime
    marked = False

    def visit(text: str, block: Any) -> None:
        nonlocal marked
        texts.append(text)
        mark = block.get("cache_control") if isinstance(block, Mapping) else None
        if isinstance(mark, Mapping):
            marked = True
            end = sum(len(t) for t in texts)
            ends["5m"] = end  # the last mark of any lifetime ends the whole write
            if mark.get("ttl") == "1h":
                ends["1h"] = end

    for tool in as_list(body.get("tools")):
        visit(orjson.dumps(tool).decode(), tool)
    system = body.get("system")
    for block in [system] if isinstance(system, str) else as_list(system):
        visit(_one_block_text(block), block)
    for msg in as_list(body.get("messages")):
        content = msg.get("content") if isinstance(msg, Mapping) else None
        for block in [content] if isinstance(content, str) else as_list(content):
            visit(_one_block_text(block), block)
    if not marked:
        return None
    text = "".join(texts)
    written = min(count_text(text[:ends["5m"]], model), prompt)
    written_1h = min(count_text(text[:ends["1h"]], model), written)
    return written - written_1h, written_1h


def _compute(body: dict[str, Any], model: str, digest: str) -> tuple[Reply, int, Writes]:
    messages = as_list(body.get("messages"))
    tool_result = _tool_result(messages)
    tools = [t for t in as_list(body.get("tools"))
             if isinstance(t, Mapping) and isinstance(t.get("name"), str) and "input_schema" in t]
    choice = as_map(body.get("tool_choice"))
    tool = None
    if tools and choice.get("type") != "none" and tool_result is None:
        tool = tools[0]
        if choice.get("type") == "tool":
            tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    reply = plan(
        digest=digest, model=model, user_text=last_user_text(body), tool_result=tool_result,
        tool=(tool["name"], tool.get("input_schema")) if tool else None,
        max_tokens=body.get("max_tokens"), stops=stops_of(body.get("stop_sequences")),
    )
    prompt = count_messages(_flat(body, messages), model)
    if body.get("tools"):
        prompt += count_text(orjson.dumps(body["tools"]).decode(), model)
    return reply, prompt, _cache_writes(body, model, prompt)


@lru_cache(maxsize=4096)
def _cached(digest: str, model: str, key: bytes) -> tuple[Reply, int, Writes]:
    return _compute(orjson.loads(key), model, digest)


def _reply(body: dict[str, Any], model: str) -> tuple[Reply, int, Writes]:
    key = encoded_body(body)  # first: a body too deep to encode is refused before anything walks it
    digest = digest_of(body, "anthropic:" + model)
    if len(key) > CACHED_BODY_BYTES:  # the cache keeps its keys: large bodies are answered uncached
        return _compute(body, model, digest)
    return _cached(digest, model, key)


def _usage(prompt: int, output_tokens: int, writes: Writes) -> dict[str, Any]:
    if writes is None:
        return {"input_tokens": prompt, "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    written_5m, written_1h = writes
    return {"input_tokens": prompt - written_5m - written_1h, "output_tokens": output_tokens,
            "cache_creation_input_tokens": written_5m + written_1h, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": written_5m, "ephemeral_1h_input_tokens": written_1h}}


def _model(body: Mapping[str, Any], model: str | None) -> str:
    return model or (body["model"] if isinstance(body.get("model"), str) else "claude-mock")


def _tool_input(reply: Reply) -> Any:
    try:
        return orjson.loads(reply.tool_args or "{}")
    except orjson.JSONDecodeError:  # arguments cut short by max_tokens: what parsed is nothing
        return {}


def _tool_block(reply: Reply, with_input: bool) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + reply.digest, "name": reply.tool_name,
            "input": _tool_input(reply) if with_input else {}}


def anthropic_message(body: dict[str, Any], *, model: str | None = None) -> dict[str, Any]:
    name = _model(body, model)
    reply, prompt, writes = _reply(body, name)
    content = [_tool_block(reply, True)] if reply.is_tool else [{"type": "text", "text": reply.text}]
    return {
        "id": "msg_" + reply.digest,
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": content,
        "stop_reason": _STOP[reply.finish],
        "stop_sequence": reply.stop_sequence,
        "usage": _usage(prompt, reply.completion_tokens, writes),
    }


def anthropic_events(body: dict[str, Any], *, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The stream as (event name, data) pairs, in the order Anthropic sends them."""
    name = _model(body, model)
    reply, prompt, writes = _reply(body, name)
    start: dict[str, Any] = {"id": "msg_" + reply.digest, "type": "message", "role": "assistant", "model": name,
             "content": [], "stop_reason": None, "stop_sequence": None, "usage": _usage(prompt, 1, writes)}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    if reply.is_tool:
        block: dict[str, Any] = _tool_block(reply, False)
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [{"type": "input_json_delta", "partial_json": f} for f in json_fragments(reply.tool_args or "")]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in pieces(reply.text)]
    events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
    events.append(("ping", {"type": "ping"}))
    events.extend(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas)
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": _STOP[reply.finish],
                                               "stop_sequence": reply.stop_sequence},
                                     "usage": {"output_tokens": reply.completion_tokens}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events
