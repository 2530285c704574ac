"""The mock, fuzzed: every malformed request body gets a 2xx or a 4xx from the real server, never a 500.

A seeded walk over the fields of a valid request of each face (OpenAI and Azure chat, embeddings,
Anthropic messages, streamed and not): each field, and each field of its messages and tools, is
replaced by values of every JSON type, then a few at once. The mock must be as strict and as
robust as the gateway it tests (the gateway's own walk is tests/unit/http/test_malformed_bodies.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from tests.support.processes import RunningProcess

ODD: list[Any] = [None, True, 0, -1, 5, 2**62, 2**64 - 1, 1.5, 1e300, "", "x", "none", "auto", "required", [], [1],
                  ["x"], [None], [[1, 2]], {}, {"a": 1}, {"function": 5}, {"type": "function", "function": 5},
                  {"type": "tool", "name": 5}, {"type": "text", "text": 3}, [{"type": "text", "text": "hi"}],
                  [{"function": None}], [{"function": {"name": 1}}], "<deep>"]
# "<deep>" stands for arrays nested 300 levels: JSON orjson reads (up to 1024 levels) but cannot write again.
DEEP = b"[" * 300 + b"]" * 300

TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "string"}, "b": {"anyOf": [{"type": "integer"}]}},
    "required": ["a", "b"]}}}
OPENAI_CHAT: dict[str, Any] = {
    "model": "gpt-4o-mini", "max_tokens": 16, "n": 1, "stop": ["\n"], "stream": False,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "again"},
    ],
    "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}},
}
OPENAI_STREAM = {**OPENAI_CHAT, "stream": True, "stream_options": {"include_usage": True}}
EMBEDDINGS: dict[str, Any] = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8,
                              "encoding_format": "float"}
ANTHROPIC: dict[str, Any] = {
    "model": "claude-haiku-4-5", "max_tokens": 16, "system": [{"type": "text", "text": "Be brief."}],
    "stop_sequences": ["\n"], "stream": False,
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                                     {"type": "text", "text": "again"}]},
    ],
    "tools": [{"name": "f", "input_schema": TOOL["function"]["parameters"]}],  # type: ignore[index]
    "tool_choice": {"type": "tool", "name": "f"},
}
FACES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "openai-chat": ("/v1/chat/completions", OPENAI_CHAT, {}),
    "openai-stream": ("/v1/chat/completions", OPENAI_STREAM, {}),
    "azure-chat": ("/openai/deployments/d/chat/completions?api-version=2024-10-21", OPENAI_CHAT, {}),
    "embeddings": ("/v1/embeddings", EMBEDDINGS, {}),
    "anthropic": ("/v1/messages", ANTHROPIC, {"anthropic-version": "2023-06-01"}),
    "anthropic-stream": ("/v1/messages", {**ANTHROPIC, "stream": True}, {"anthropic-version": "2023-06-01"}),
}


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if at:
        yield at
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*at, k))


def _replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(body))
    node = out
    for i, step in enumerate(path):
        if isinstance(node, dict) != isinstance(step, str):
            raise TypeError("a parent was replaced")
        if i == len(path) - 1:
            node[step] = value
        else:
            node = node[step]
    return out


def _bodies(valid: dict[str, Any], seed: int) -> list[bytes]:
    rng = random.Random(seed)
    paths = list(_paths(valid))
    bodies = [_replaced(valid, p, v) for p in paths for v in ODD]
    for _ in range(150):
        body = valid
        for p in rng.sample(paths, 3):
            try:
                body = _replaced(body, p, rng.choice(ODD))
            except (KeyError, IndexError, TypeError):
                pass  # a parent was replaced first
        bodies.append(body)
    return [orjson.dumps(b).replace(b'"<deep>"', DEEP) for b in bodies]


@pytest.mark.parametrize("face", list(FACES))
def test_every_malformed_request_gets_a_2xx_or_a_4xx(mock: RunningProcess, face: str) -> None:
    path, valid, headers = FACES[face]
    bodies = _bodies(valid, 20261207)
    with httpx.Client(base_url=mock.url, timeout=10,
                      headers={"content-type": "application/json", **headers}) as http:
        assert http.post(path, content=orjson.dumps(valid)).status_code == 200

        def send(raw: bytes) -> tuple[int, bytes]:
            r = http.post(path, content=raw)
            return r.status_code, raw

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(send, bodies))
    failed = [(status, raw[:300]) for status, raw in results if status >= 500]
    assert not failed, f"{len(failed)} of {len(bodies)} bodies got a 5xx: {failed[:5]}"
    assert any(status == 400 for status, _ in results) and any(status == 200 for status, _ in results)


def test_a_body_too_deep_to_encode_is_a_400_naming_the_depth(mock: RunningProcess) -> None:
    deep = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "x": ' + \
        b"[" * 300 + b"]" * 300 + b"}"
    with httpx.Client(base_url=mock.url, timeout=10) as http:
        r = http.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
        log = http.get("/_mock/requests", params={"limit": 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "nesting_too_deep" and "254" in r.json()["error"]["message"]
    assert log.status_code == 200  # the request log still renders


@pytest.mark.parametrize(("body", "param"), [
    ({"tool_choice": {"function": 5}}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"n": 129}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_openai_chat_fields_the_mock_reads_are_checked(mock: RunningProcess, body: dict[str, Any],
                                                        param: str) -> None:
    with httpx.Client(base_url=mock.url, timeout=10) as http:
        r = http.post("/v1/chat/completions", json={**OPENAI_CHAT, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_embeddings_dimensions_beyond_any_model_are_a_400(mock: RunningProcess) -> None:
    with httpx.Client(base_url=mock.url, timeout=10) as http:
        huge = http.post("/v1/embeddings", json={**EMBEDDINGS, "dimensions": 2**62})
        fine = http.post("/v1/embeddings", json={**EMBEDDINGS, "dimensions": 3072})
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "dimensions"
    assert fine.status_code == 200 and len(fine.json()["data"][0]["embedding"]) == 3072


DIRECTIVE_VALUES: list[Any] = [*[v for v in ODD if v != "<deep>"], "inf", "-inf", "nan", "1e400", "-1",
                               "99999999999999999999999", "cut:1e400", "cut:-1", "cut:inf", "error:x", "error:1e30",
                               "hang:1", " NONE ", 1e308]  # (no real hang or reset: they are faults, not errors)
DIRECTIVE_KEYS = ["status", "retry_after", "latency_ms", "chunk_delay_ms", "fault", "message", "param", "code",
                  "model"]


def test_odd_fault_directives_and_headers_are_400s_not_500s(mock: RunningProcess) -> None:
    cases: list[tuple[dict[str, Any], dict[str, str]]] = []
    for key in DIRECTIVE_KEYS:
        for value in DIRECTIVE_VALUES:
            cases.append(({key: value, **({"status": 429} if key == "retry_after" else {})}, {}))
    for header in ("x-mock-status", "x-mock-retry-after", "x-mock-latency-ms", "x-mock-fault",
                   "x-mock-chunk-delay-ms"):
        for text in ("inf", "nan", "1e400", "-1", "99999999999999999999999", "x", "cut:inf", ""):
            cases.append(({}, {header: text}))

    def send(case: tuple[dict[str, Any], dict[str, str]]) -> tuple[int, Any]:
        directive, headers = case
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "hi #mock" + orjson.dumps(directive).decode()}]}
        r = http.post("/v1/chat/completions", json=body, headers=headers)
        return r.status_code, case

    with httpx.Client(base_url=mock.url, timeout=10) as http, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, cases))
    failed = [(status, case) for status, case in results if status >= 500]
    assert not failed, failed[:5]


@pytest.mark.parametrize("field", ["latency_ms", "latency_jitter_ms", "chunk_delay_ms", "retry_after_s"])
def test_a_fault_config_with_an_endless_wait_is_refused(mock: RunningProcess, field: str) -> None:
    with httpx.Client(base_url=mock.url, timeout=10) as http:
        for value in ("Infinity", "1e308"):
            r = http.patch("/_mock/faults", content=b'{"%s": %s}' % (field.encode(), value.encode()))
            assert r.status_code == 400, (value, r.text)
        assert http.get("/_mock/faults").json()[field] in (0.0, 1.0)  # unchanged
