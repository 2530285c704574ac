"""The API-neutral answer rules shared by the OpenAI and Anthropic faces of the mock.

A request is reduced to a `Reply` (text or one tool call, a finish reason, token counts) once;
each face only renders it in its own shape. Replies are a pure function of the request, so the
same body always gets the same content, ids and usage, which is what lets tests assert on exact
values and lets the gateway's exact cache be checked against the mock.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.limits.tokens import count_text, encoding_for_model

QUOTE_CHARS = 200
# Bodies up to this size are kept as keys of the answer caches (4,096 entries each): at most 256 MB.
CACHED_BODY_BYTES = 65_536
ANSWER_PREFIX = "Mock answer to: "
TOOL_PREFIX = "Tool said: "
# Keys that change how an answer is delivered, not what it is: a streamed and a plain request
# with the same content get the same ids.
_DELIVERY_KEYS = frozenset({"stream", "stream_options"})
_PIECE = re.compile(r"\S+\s*|\s+")

Finish = Literal["stop", "length", "tool", "stop_sequence"]


class Refused(ValueError):
    """A request the provider would refuse with a 400; `param` and `code` as OpenAI would name them."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def encoded_body(body: Mapping[str, Any]) -> bytes:
    """The body as compact JSON (the answer cache's key). JSON that parsed but nests deeper than orjson
    writes (255 levels) is refused, as the gateway refuses it, rather than failing later as a 500."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise Refused("The request is nested too deeply: JSON may nest at most 254 levels deep.",
                      code="nesting_too_deep") from None


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    tool_name: str | None
    tool_args: str | None  # compact JSON object text
    finish: Finish
    stop_sequence: str | None
    digest: str  # 24 hex chars from the request, for deterministic ids
    completion_tokens: int

    @property
    def is_tool(self) -> bool:
        return self.tool_name is not None


def digest_of(body: Mapping[str, Any], salt: str) -> str:
    content = {k: v for k, v in body.items() if k not in _DELIVERY_KEYS}
    try:
        raw = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # e.g. an int beyond 64 bits; rare enough to pay for the slow encoder
        raw = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(salt.encode() + b"\0" + raw).hexdigest()[:24]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def block_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts/blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content
            if isinstance(p, Mapping) and p.get("type", "text") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message that has text (OpenAI and Anthropic bodies alike).

    Anthropic user messages that only carry tool results have no text and are skipped, so both
    APIs see the same "last user text" across a tool round trip.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            text = block_text(msg.get("content"))
            if text:
                return text
    return ""


def args_from_schema(schema: Any) -> dict[str, Any]:
    """A JSON object that satisfies the schema's `required` properties with placeholder values."""
    if not isinstance(schema, Mapping):
        return {}
    props = as_map(schema.get("properties"))
    return {name: value_for(props.get(name)) for name in as_list(schema.get("required")) if isinstance(name, str)}


def value_for(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return "mock"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return value_for(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first type that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return args_from_schema(schema)
    return {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(
        kind if isinstance(kind, str) else "string", "mock"
    )


def plan(
    *,
    digest: str,
    model: str,
    user_text: str,
    tool_result: str | None,
    tool: tuple[str, Any] | None,
    max_tokens: Any,
    stops: Iterable[str],
) -> Reply:
    """The answer: a tool call when `tool` is given, else a text answer cut by stops and max_tokens."""
    limit = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 0 \
        else None
    if tool is not None:
        name, schema = tool
        args = orjson.dumps(args_from_schema(schema)).decode()
        used = count_text(name + args, model)
        if limit is None or used <= limit:
            return Reply("", name, args, "tool", None, digest, used)
        # Cut short as a provider cuts a tool call: the arguments stop mid-JSON, finish is "length",
        # and usage counts what was generated (the name's tokens first, then the arguments').
        enc = encoding_for_model(model)
        cut = enc.decode(enc.encode(name + args, disallowed_special=())[:limit])
        return Reply("", name, cut[len(name):] if cut.startswith(name) else "", "length", None, digest, limit)
    if tool_result is not None:
        text = TOOL_PREFIX + tool_result[:QUOTE_CHARS]
    else:
        text = ANSWER_PREFIX + user_text[:QUOTE_CHARS]
    finish: Finish = "stop"
    stop_sequence = None
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if hits:
        at, stop_sequence = min(hits)
        text, finish = text[:at], "stop_sequence"
    tokens = encoding_for_model(model).encode(text, disallowed_special=())
    if limit is not None and limit < len(tokens):
        tokens = tokens[:limit]
        text = encoding_for_model(model).decode(tokens)
        finish, stop_sequence = "length", None
    return Reply(text, None, None, finish, stop_sequence, digest, len(tokens))


def stops_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str)]
    return []


def pieces(text: str) -> list[str]:
    """Word-sized stream fragments whose concatenation is exactly `text`."""
    return _PIECE.findall(text)


def json_fragments(text: str, size: int = 8) -> list[str]:
    """Tool-call argument fragments, as providers stream partial JSON."""
    return [text[i:i + size] for i in range(0, len(text), size)]
