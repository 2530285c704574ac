"""JSON nested deeper than the gateway can encode again: a 400 naming the limit, never a 500.

orjson reads 1024 levels but writes at most 254, and the gateway re-encodes what it forwards (the
provider's request, the tools it counts). Each place is attacked: the tools estimate, the OpenAI and
Anthropic encoders (chat streamed and not), embeddings, and the in-process mock provider. A body as
deep as can be encoded still goes through.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.errors import MAX_JSON_DEPTH
from tests.e2e.test_chat import HELLO, WEATHER_TOOL
from tests.support.gateway import GatewayInstance


def nested(levels: int) -> Any:
    """Arrays nested `levels` deep: parsed by orjson (up to 1024) but written only up to 254."""
    return orjson.loads(b"[" * levels + b"]" * levels)


DEEP = 300  # inside a body: deeper than orjson writes, well within what it reads


def _post(gateway: GatewayInstance, path: str, body: bytes, request_id: str) -> httpx.Response:
    with gateway.http() as http:
        return http.post(path, content=body, headers={"content-type": "application/json",
                                                      "x-request-id": request_id})


def _raw(body: dict[str, Any], field: str, levels: int) -> bytes:
    """`body` with `field` nested `levels` deep (written by hand: orjson cannot write it)."""
    head = orjson.dumps(body)[:-1]
    return head + b',"' + field.encode() + b'":' + b"[" * levels + b"]" * levels + b"}"


def _assert_nesting_400(r: httpx.Response, gateway: GatewayInstance, request_id: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "nesting_too_deep" and err["type"] == "invalid_request_error"
    assert str(MAX_JSON_DEPTH) in err["message"]
    line = gateway.wait_log(request_id)
    assert line["status"] == 400 and line["error"]["code"] == "nesting_too_deep"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["chat", "demo"])
def test_a_deep_field_forwarded_as_is_is_a_400(gateway: GatewayInstance, route: str, stream: bool,
                                                upstream_log: Any) -> None:
    rid = f"deep-{route}-{stream}"
    r = _post(gateway, "/v1/chat/completions",
              _raw({"model": route, "messages": HELLO, "stream": stream}, "metadata_x", DEEP), rid)
    _assert_nesting_400(r, gateway, rid)
    assert not [e for e in upstream_log() if e["path"].startswith("/v1/chat")]  # nothing went upstream


@pytest.mark.parametrize("stream", [False, True])
def test_deep_anthropic_encodings_are_a_400(gateway: GatewayInstance, stream: bool) -> None:
    # `thinking` is passed through to Anthropic as sent; tool-call arguments are a string the encoder parses.
    r = _post(gateway, "/v1/chat/completions",
              _raw({"model": "claude", "messages": HELLO, "stream": stream}, "thinking", DEEP), f"deep-th-{stream}")
    _assert_nesting_400(r, gateway, f"deep-th-{stream}")
    arguments = '{"a": ' + "[" * DEEP + "]" * DEEP + "}"
    messages = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(model="claude", messages=messages, stream=stream)  # type: ignore[arg-type]
    assert info.value.code == "nesting_too_deep"


def test_deep_tools_are_refused_by_the_estimate(gateway: GatewayInstance) -> None:
    tool = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "parameters": {"type": "object",  # type: ignore[dict-item]
                                                                                    "x": nested(DEEP)}}}
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(model="chat", messages=HELLO, tools=[tool])  # type: ignore[list-item]
    assert info.value.code == "nesting_too_deep" and info.value.param == "tools"


def test_deep_embeddings_field_is_a_400(gateway: GatewayInstance) -> None:
    r = _post(gateway, "/v1/embeddings", _raw({"model": "embed", "input": "hi"}, "x", DEEP), "deep-embed")
    _assert_nesting_400(r, gateway, "deep-embed")


@pytest.mark.parametrize("route", ["chat", "claude"])
def test_as_deep_as_can_be_encoded_goes_through(gateway: GatewayInstance, route: str) -> None:
    # The body is level 1, so its field may nest MAX_JSON_DEPTH - 1 levels; one more is refused.
    field = "metadata_x" if route == "chat" else "thinking"
    body = {"model": route, "messages": HELLO}
    if route == "chat":
        ok = _post(gateway, "/v1/chat/completions", _raw(body, field, MAX_JSON_DEPTH - 1), f"edge-{route}")
        assert ok.status_code == 200, ok.text
    over = _post(gateway, "/v1/chat/completions", _raw(body, field, MAX_JSON_DEPTH), f"over-{route}")
    _assert_nesting_400(over, gateway, f"over-{route}")
    # and the target is none the worse for it
    assert gateway.client().chat.completions.create(model=route, messages=HELLO).choices[0].message.content
