"""Validation of the fields of an OpenAI request that the gateway itself relies on.

Everything else in the body passes through untouched: the provider is the judge of fields the
gateway does not use. Messages mirror OpenAI's own wording so clients see familiar errors.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import BadRequest, InvalidJSON
from gateway.limits.completion import MAX_CHOICES

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidJSON(
            "We could not parse the JSON body of your request. The body must be valid UTF-8 JSON "
            "(at most 1024 levels deep)."
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_type")
    return body


def _type_error(param: str, expected: str, value: Any) -> BadRequest:
    got = "null" if value is None else type(value).__name__
    return BadRequest(f"Invalid type for '{param}': expected {expected}, but got {got}.",
                      param=param, code="invalid_type")


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    return model


def _int_at_least(body: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool):
        raise _type_error(name, "an integer", v)
    if v < low:
        raise BadRequest(f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
                         f"but got {v} instead.", param=name, code="integer_below_min_value")
    if high is not None and v > high:
        raise BadRequest(f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
                         f"but got {v} instead.", param=name, code="integer_above_max_value")


def _number_between(body: dict[str, Any], name: str, low: float, high: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise _type_error(name, "a number", v)
    if not low <= v <= high:
        raise BadRequest(f"Invalid '{name}': expected a value between {low:g} and {high:g}, but got {v}.",
                         param=name, code="invalid_value")


def validate_chat(body: dict[str, Any]) -> str:
    """Checks a chat.completions body; returns the requested model (route name)."""
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("Missing required parameter: 'messages'.", param="messages",
                         code="missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise BadRequest("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                         param="messages", code="empty_array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _type_error(f"messages[{i}]", "an object", msg)
        role = msg.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or dict role is unhashable
            raise BadRequest(f"Invalid value for 'messages[{i}].role': expected one of "
                             f"{', '.join(sorted(_ROLES))}.", param=f"messages[{i}].role", code="invalid_value")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _type_error(f"messages[{i}].content", "a string or an array", content)
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, list):
                raise _type_error(f"messages[{i}].tool_calls", "an array", tool_calls)
            for j, call in enumerate(tool_calls):
                if not isinstance(call, dict) or not isinstance(call.get("function", {}), dict):
                    raise _type_error(f"messages[{i}].tool_calls[{j}]", "an object with a 'function' object", call)
        if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
            raise BadRequest(f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                             param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _type_error("stream_options", "an object", opts)
        if not stream:
            raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                             param="stream_options", code="invalid_value")
    _int_at_least(body, "max_tokens", 1)
    _int_at_least(body, "max_completion_tokens", 1)
    _int_at_least(body, "n", 1, MAX_CHOICES)  # every choice is billed, and reserved
    _int_at_least(body, "best_of", 1, MAX_CHOICES)  # (so is every sequence a server generates for it)
    _number_between(body, "temperature", 0, 2)
    _number_between(body, "top_p", 0, 1)
    _number_between(body, "presence_penalty", -2, 2)
    _number_between(body, "frequency_penalty", -2, 2)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _type_error("tools", "an array", tools)
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequest(f"Missing required parameter: 'tools[{i}].function.name'.",
                                 param=f"tools[{i}].function.name", code="missing_required_parameter")
    return model


def validate_embeddings(body: dict[str, Any]) -> str:
    model = _require_model(body)
    inp = body.get("input")
    if inp is None:
        raise BadRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    ok = isinstance(inp, str) or (
        isinstance(inp, list) and inp and (
            all(isinstance(x, str) for x in inp)
            or all(isinstance(x, int) and not isinstance(x, bool) for x in inp)
            or all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in inp)
        )
    )
    if not ok:
        raise BadRequest("Invalid 'input': expected a string, an array of strings, or an array of token arrays.",
                         param="input", code="invalid_value")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise BadRequest("Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format",
                         code="invalid_value")
    _int_at_least(body, "dimensions", 1)
    return model
