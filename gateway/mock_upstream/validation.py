"""What the mock refuses: the fields it reads, checked as strictly as the real APIs (and the gateway) do.

The mock stands in for a provider in tests and drills, so whatever arrives must get a 2xx or a 4xx in
the provider's own shape, never a 500: a mock that crashes on a body the real API would refuse hides
how the gateway handles that refusal. The OpenAI faces share the gateway's own validation of chat and
embeddings bodies (OpenAI's wording), plus the fields only the mock reads (`tool_choice`, `stop`,
`n`; the answers bound `dimensions`); the Anthropic face checks what the Messages API requires. Raises `Refused`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import BadRequest
from gateway.http.validation import validate_chat, validate_embeddings
from gateway.mock_upstream.core import Refused

MAX_STOPS = 4
_TOOL_CHOICES = ("none", "auto", "required")
_ANTHROPIC_ROLES = ("user", "assistant")
_ANTHROPIC_CHOICES = ("auto", "any", "tool", "none")


def _refused(e: BadRequest) -> Refused:
    return Refused(e.message, param=e.param, code=e.error_code)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_openai_chat(body: Mapping[str, Any], model_in_path: bool) -> None:
    try:
        # Azure names the deployment in the path; the body's model is not needed there.
        validate_chat({**body, "model": "deployment"} if model_in_path else dict(body))
    except BadRequest as e:
        raise _refused(e) from None
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= MAX_STOPS and all(isinstance(s, str) for s in stop)):
        raise Refused(f"Invalid 'stop': expected a string or an array of at most {MAX_STOPS} strings.",
                      param="stop", code="invalid_value")
    choice = body.get("tool_choice")
    if choice is None or choice in _TOOL_CHOICES:
        return
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(fn, dict)
            and isinstance(fn.get("name"), str)):
        raise Refused("Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
                      "{'type': 'function', 'function': {'name': ...}}.", param="tool_choice", code="invalid_value")


def check_openai_embeddings(body: Mapping[str, Any], model_in_path: bool) -> None:
    try:
        validate_embeddings({**body, "model": "deployment"} if model_in_path else dict(body))
    except BadRequest as e:
        raise _refused(e) from None


def check_anthropic_messages(body: Mapping[str, Any]) -> None:
    """Anthropic's wording: `<field>: <problem>`."""
    if not isinstance(body.get("model"), str):
        raise Refused("model: Field required" if "model" not in body else "model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1):
        raise Refused("max_tokens: Field required" if "max_tokens" not in body
                      else "max_tokens: Input should be an integer greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Refused("messages: Field required" if "messages" not in body else "messages: Input should be a list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ANTHROPIC_ROLES:
            raise Refused(f"messages.{i}: each message needs a role of 'user' or 'assistant'")
        if not isinstance(msg.get("content"), str | list):
            raise Refused(f"messages.{i}.content: Input should be a valid string or list")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Refused("stream: Input should be a valid boolean")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise Refused("stop_sequences: Input should be a list of strings")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Refused("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not (isinstance(tool, dict) and isinstance(tool.get("name"), str)
                    and isinstance(tool.get("input_schema", {}), dict)):
                raise Refused(f"tools.{i}: a tool needs a string name and an object input_schema")
    choice = body.get("tool_choice")
    if choice is not None and not (
            isinstance(choice, dict) and choice.get("type") in _ANTHROPIC_CHOICES
            and (choice.get("type") != "tool" or isinstance(choice.get("name"), str))):
        raise Refused("tool_choice: Input should be an object with type 'auto', 'any', 'none', or 'tool' and a name")
