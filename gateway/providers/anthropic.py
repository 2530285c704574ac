"""The Anthropic Messages dialect: OpenAI Chat Completions in, Anthropic Messages out, and back.

Decisions on the edges, so callers and reviewers need not rediscover them:

- System and developer messages, wherever they appear, become one top-level `system` string
  (texts joined by a blank line, text parts of one message too). It becomes a list of text
  blocks only when a part carries Anthropic's `cache_control`, which is then kept.
- Consecutive messages of one role are merged, and tool results that end up in the same user
  turn as text are put first, because Anthropic requires tool_result blocks to lead the turn
  that answers a tool_use. A conversation that starts with `assistant` is passed as is (no
  synthetic user turn is inserted): whether that is allowed is Anthropic's call, and its 400
  reaches the client as a rejection rather than the gateway inventing words the user never said.
  Assistant messages with neither text nor tool calls are dropped (Anthropic rejects empty text).
- `temperature` is passed unchanged although Anthropic accepts 0..1 and OpenAI 0..2: clamping
  would silently change the sampling a client asked for; Anthropic's 400 says what is wrong.
- `response_format` `json_schema` becomes `output_config.format` (Anthropic structured outputs;
  models without it answer 400). `json_object` has no equivalent (Anthropic needs a schema) and
  is refused with a BadRequest, as are `n` > 1, `logprobs`, `top_logprobs`, `audio`, audio
  `modalities`, the deprecated `functions`/`function_call`, `web_search_options`, input audio
  and `file_id` parts. Parameters that only tune OpenAI's service (seed, penalties, logit_bias,
  service_tier, stream_options, store, metadata, prediction, reasoning_effort, verbosity,
  prompt_cache_*, ...) are dropped, and so is any unknown field, except Anthropic's own `top_k`
  and `thinking`, which are passed through for clients that send them as extra body fields.
- Tool `strict` is dropped: Anthropic's strict tool use is not available on every model.
- Images: data: URLs become base64 sources, http(s) URLs become url sources; PDF `file` parts
  with inline data become document blocks. `detail` has no Anthropic equivalent and is ignored.
- `anthropic-version` is `settings.api_version` when configured, else 2023-06-01.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from gateway.errors import CLIENT_VALUE_CHARS, BadRequest, UpstreamBadResponse, bounded
from gateway.providers.anthropic_stream import (
    AnthropicStreamTranslator,
    finish_reason_for,
    openai_usage,
    update_usage,
)
from gateway.providers.base import ChatResult, Dialect, Usage, served_model_name
from gateway.settings import ProviderSettings

ANTHROPIC_VERSION = "2023-06-01"
_DATA_URL = re.compile(r"^data:([^;,]+)(?:;[^;,]*)*;base64,(.*)$", re.DOTALL)
# Passed through untouched for clients that target Anthropic features via extra body fields.
_NATIVE_FIELDS = ("top_k", "thinking")
Block = dict[str, Any]


def _bad(param: str, message: str) -> BadRequest:
    # Some messages quote what the client sent (a part type, a tool call id): bounded, as anything
    # of the client's that the gateway repeats.
    return BadRequest(bounded(message, 2 * CLIENT_VALUE_CHARS), param=param)


class AnthropicDialect(Dialect):
    def chat_url(self, settings: ProviderSettings, model: str) -> str:
        base = (settings.base_url or "").rstrip("/")
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def auth_headers(self, settings: ProviderSettings) -> dict[str, str]:
        headers = {"anthropic-version": settings.api_version or ANTHROPIC_VERSION,
                   "content-type": "application/json"}
        if settings.api_key:
            headers["x-api-key"] = settings.api_key
        return headers

    def encode_chat(self, body: dict[str, Any], model: str, settings: ProviderSettings) -> dict[str, Any]:
        return encode_request(body, model, settings.default_max_tokens)

    def decode_chat(self, raw: bytes, requested_model: str) -> ChatResult:
        return decode_message(raw, requested_model)

    def stream_translator(self, requested_model: str, include_usage: bool) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(requested_model, include_usage)

    def error_message(self, status: int, raw: bytes) -> tuple[str, str | None, str | None]:
        return error_parts(status, raw)


# ---------------------------------------------------------------- request

def encode_request(body: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    _refuse_unsupported(body)
    system, turns = _encode_messages(body.get("messages"))
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens),
                           "messages": turns}
    if system is not None:
        out["system"] = system
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = _stop_sequences(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    out.update(_encode_tooling(body))
    output_format = _output_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    out.update({k: body[k] for k in _NATIVE_FIELDS if body.get(k) is not None})
    return out


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("n", "Anthropic models return one choice; n must be 1")
    if body.get("logprobs"):
        raise _bad("logprobs", "Anthropic models do not return log probabilities")
    if body.get("top_logprobs"):
        raise _bad("top_logprobs", "Anthropic models do not return log probabilities")
    if body.get("audio") is not None:
        raise _bad("audio", "Anthropic models do not produce audio")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise _bad("modalities", "Anthropic models do not produce audio")
    for key in ("functions", "function_call"):
        if body.get(key) is not None:
            raise _bad(key, f"'{key}' is deprecated and not translated; use 'tools' and 'tool_choice'")
    if body.get("web_search_options") is not None:
        raise _bad("web_search_options", "web search is not available through this provider")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    """The larger of the two completion fields, as the gateway reserved and capped both."""
    best = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(key, f"'{key}' must be a positive integer")
        if best is None or value > best:
            best = value
    return default if best is None else best


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise _bad("stop", "'stop' must be a string or a list of strings")


def _output_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema", "a JSON schema object is required")
        return {"type": "json_schema", "schema": schema}
    if kind == "json_object":
        raise _bad("response_format", "Anthropic has no schemaless JSON mode; use type 'json_schema'")
    raise _bad("response_format", "unsupported response_format type")


# ---------------------------------------------------------------- messages

def _encode_messages(messages: Any) -> tuple[str | list[Block] | None, list[dict[str, Any]]]:
    if not isinstance(messages, list):
        raise _bad("messages", "'messages' must be a list")
    system: list[Block] = []
    turns: list[tuple[str, str | list[Block]]] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(param, "each message must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(msg.get("content"), f"{param}.content"))
        elif role == "user":
            turns.append(("user", _user_content(msg.get("content"), f"{param}.content")))
        elif role == "assistant":
            content = _assistant_content(msg, param)
            if content:
                turns.append(("assistant", content))
        elif role == "tool":
            turns.append(("user", [_tool_result(msg, param)]))
        else:
            raise _bad(f"{param}.role", f"role '{role}' is not supported")
    return _system_value(system), _merge(turns)


def _system_value(blocks: list[Block]) -> str | list[Block] | None:
    if not blocks:
        return None
    if any("cache_control" in b for b in blocks):
        return blocks
    return "\n\n".join(b["text"] for b in blocks)


def _merge(turns: list[tuple[str, str | list[Block]]]) -> list[dict[str, Any]]:
    """Anthropic wants alternating roles: fold runs of one role into one turn."""
    merged: list[dict[str, Any]] = []
    for role, content in turns:
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] = _as_blocks(merged[-1]["content"]) + _as_blocks(content)
        else:
            merged.append({"role": role, "content": content})
    for turn in merged:
        if turn["role"] == "user" and isinstance(turn["content"], list):
            # sorted() is stable: tool results move first, everything else keeps its order.
            turn["content"] = sorted(turn["content"], key=lambda b: b.get("type") != "tool_result")
    return merged


def _as_blocks(content: str | list[Block]) -> list[Block]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _text_blocks(content: Any, param: str) -> list[Block]:
    """Content that may only hold text (system, tool results), as text blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(param, "content must be a string or a list of text parts")
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _bad(f"{param}[{j}]", "only text parts are allowed here")
        blocks.append(_text_block(part, f"{param}[{j}]"))
    return [b for b in blocks if b["text"]]


def _text_block(part: dict[str, Any], param: str) -> Block:
    text = part.get("text")
    if not isinstance(text, str):
        raise _bad(f"{param}.text", "a text part needs a string 'text'")
    block: Block = {"type": "text", "text": text}
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def _user_content(content: Any, param: str) -> str | list[Block]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(param, "user content must be a string or a list of parts")
    return [_user_part(part, f"{param}[{j}]") for j, part in enumerate(content)]


def _user_part(part: Any, param: str) -> Block:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return _text_block(part, param)
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return _image_block(url, f"{param}.image_url.url")
    if kind == "file":
        return _document_block(part.get("file"), f"{param}.file")
    raise _bad(f"{param}.type", f"content part type '{kind}' is not supported by Anthropic")


def _image_block(url: Any, param: str) -> Block:
    if not isinstance(url, str):
        raise _bad(param, "an image needs a URL")
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None:
            raise _bad(param, "image data URLs must be base64 encoded")
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad(param, "image URLs must be http(s) or data: URLs")


def _document_block(file: Any, param: str) -> Block:
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        raise _bad(param, "only files sent inline as file_data are supported (no file_id)")
    match = _DATA_URL.match(data)
    # OpenAI takes bare base64 for PDFs; a data URL must say it is one.
    media_type, payload = (match.group(1), match.group(2)) if match else ("application/pdf", data)
    if media_type != "application/pdf":
        raise _bad(f"{param}.file_data", "only PDF files are supported")
    source = {"type": "base64", "media_type": media_type, "data": payload}
    block: Block = {"type": "document", "source": source}
    if isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


def _assistant_content(msg: dict[str, Any], param: str) -> str | list[Block]:
    content = msg.get("content")
    tool_calls = msg.get("tool_calls") or []
    if isinstance(content, str) and not tool_calls:
        return content
    blocks = [*_assistant_text(content, f"{param}.content")]
    if not isinstance(tool_calls, list):
        raise _bad(f"{param}.tool_calls", "'tool_calls' must be a list")
    blocks += [_tool_use(call, f"{param}.tool_calls") for call in tool_calls]
    return blocks


def _assistant_text(content: Any, param: str) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(param, "assistant content must be a string, a list of parts or null")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append(_text_block(part, f"{param}[{j}]"))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            blocks.append({"type": "text", "text": part["refusal"]})
        else:
            raise _bad(f"{param}[{j}].type", "assistant parts may be text or refusal")
    return [b for b in blocks if b["text"]]


def _tool_use(call: Any, param: str) -> Block:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or call.get("type", "function") != "function":
        raise _bad(param, "only function tool calls are supported")
    if not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
        raise _bad(param, "a tool call needs an 'id' and a function 'name'")
    arguments = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise _bad(param, f"arguments of tool call '{call.get('id')}' are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _bad(param, f"arguments of tool call '{call.get('id')}' must be a JSON object")
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": parsed}


def _tool_result(msg: dict[str, Any], param: str) -> Block:
    tool_call_id = msg.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise _bad(f"{param}.tool_call_id", "a tool message needs 'tool_call_id'")
    content = msg.get("content")
    if isinstance(content, str):
        return {"type": "tool_result", "tool_use_id": tool_call_id, "content": content}
    blocks = _text_blocks(content, f"{param}.content")
    return {"type": "tool_result", "tool_use_id": tool_call_id, "content": blocks}


# ---------------------------------------------------------------- tools

def _encode_tooling(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if not tools:
        # Anthropic has nothing to choose between; a tool_choice alone would be rejected.
        return {}
    if not isinstance(tools, list):
        raise _bad("tools", "'tools' must be a list")
    out: dict[str, Any] = {"tools": [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]}
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and choice.get("type") != "none":
        # Anthropic carries this flag inside tool_choice, so OpenAI's default must be spelled out.
        choice = {"type": "auto", **choice, "disable_parallel_tool_use": True}
    if choice:
        out["tool_choice"] = choice
    return out


def _tool(tool: Any, param: str) -> Block:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or tool.get("type", "function") != "function":
        raise _bad(f"{param}.type", "only function tools are supported by Anthropic")
    if not isinstance(fn.get("name"), str):
        raise _bad(f"{param}.function.name", "a function tool needs a name")
    out: Block = {"name": fn["name"]}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    """OpenAI's tool_choice as Anthropic's; {} when the client left it to the default."""
    if choice is None:
        return {}
    simple = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str):
            return {"type": "tool", "name": name}
    raise _bad("tool_choice", "tool_choice must be 'auto', 'required', 'none' or a named function")


# ---------------------------------------------------------------- response

def decode_message(raw: bytes, requested_model: str) -> ChatResult:
    msg = _loads_message(raw)
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg["content"]:
        if not isinstance(block, dict):
            raise UpstreamBadResponse("Anthropic response has a content block that is not an object")
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_calls.append(_openai_tool_call(block))
        # thinking, redacted_thinking and server-tool blocks have no place in OpenAI's shape.
    usage = Usage()
    update_usage(usage, msg["usage"])
    finish_reason = finish_reason_for(msg.get("stop_reason"))
    served_model = served_model_name(msg.get("model")) or requested_model
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {
        "id": msg["id"],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": openai_usage(usage),
    }
    return ChatResult(body=orjson.dumps(body), usage=usage, served_model=served_model,
                      finish_reason=finish_reason)


def _loads_message(raw: bytes) -> dict[str, Any]:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("Anthropic returned a body that is not JSON") from None
    if not (
        isinstance(msg, dict)
        and isinstance(msg.get("id"), str)
        and isinstance(msg.get("content"), list)
        and isinstance(msg.get("usage"), dict)
    ):
        raise UpstreamBadResponse("Anthropic returned a body that is not a message")
    return msg


def _openai_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    if not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)):
        raise UpstreamBadResponse("Anthropic tool_use block without id or name")
    try:
        arguments = orjson.dumps(block.get("input") or {}).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: a broken answer, not a 500
        raise UpstreamBadResponse("Anthropic tool_use input is nested too deeply") from None
    function = {"name": block["name"], "arguments": arguments}
    return {"id": block["id"], "type": "function", "function": function}


def error_parts(status: int, raw: bytes) -> tuple[str, str | None, str | None]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        code = err.get("type") if isinstance(err.get("type"), str) else None
        return err["message"], None, code
    return f"Anthropic returned HTTP {status}", None, None
