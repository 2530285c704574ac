"""Malformed chat bodies, generated: every one is a BadRequest (a 4xx) or goes through, never another error.

A seeded walk over the shapes a client can send: each field of a valid request, and of its messages
and tool calls, is replaced by values of every JSON type. Whatever `validate_chat` accepts must
then survive what the request path does with it before any provider answers: the route's caps, the
prompt estimate for OpenAI and other targets, and the OpenAI and Anthropic request encodings.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.http.validation import validate_chat
from gateway.limits.estimate import estimate_prompt
from gateway.providers.anthropic import encode_request
from gateway.providers.openai import OpenAIDialect
from gateway.settings import ProviderSettings

# Only what JSON can carry (orjson parses the body: integers up to 2**64 - 1, no infinities).
ODD: list[Any] = [None, True, 0, -1, 2**64 - 1, -(2**63), 1.5, 1e300, "", "x", "\x00", "system", [], [1], ["x"], [None],
                  {}, {"a": 1}, {"type": "text", "text": 3}, [{"type": "text", "text": "hi"}], [{"text": ["x"]}],
                  [{"function": None}], [{"function": [1]}], [{"function": {"name": 1, "arguments": {}}}]]

VALID: dict[str, Any] = {
    "model": "chat", "max_tokens": 16, "temperature": 0.5,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "stop": ["\n"], "user": "u1",
}


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at] if at else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


def _replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(body))
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = orjson.loads(orjson.dumps(value))
    return out


def _bodies() -> list[dict[str, Any]]:
    rng = random.Random(20261130)
    paths = _paths(VALID)
    bodies = [_replaced(VALID, p, v) for p in paths for v in ODD]
    for _ in range(400):  # and a few at once
        body = VALID
        for p in rng.sample(paths, 3):
            try:
                body = _replaced(body, p, rng.choice(ODD))
            except (KeyError, IndexError, TypeError):
                pass  # a parent was replaced first
        bodies.append(body)
    return bodies


BODIES = _bodies()
SETTINGS = ProviderSettings(kind="openai", base_url="http://127.0.0.1:1/v1")


@pytest.mark.parametrize("chunk", range(8))
def test_every_malformed_body_is_a_client_error_or_goes_through(chunk: int) -> None:
    for body in BODIES[chunk::8]:
        try:
            validate_chat(body)
            estimate_prompt(body, (("openai", "gpt-4o"), ("anthropic", "claude-x")), 0.1)
            OpenAIDialect().encode_chat(body, "gpt-4o", SETTINGS)
            encode_request(body, "claude-x", 1024)
        except GatewayError as e:
            assert 400 <= e.status < 500, (body, e)
        except Exception as e:  # the point: nothing else may escape
            pytest.fail(f"{type(e).__name__}: {e} for {body!r}")
