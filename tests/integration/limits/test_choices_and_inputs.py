"""What a call may make the provider bill, reserved before it is sent (issue 12, items 1-3), on both
storage pairs: every choice of `n`, the larger of the two completion fields, and the prompt's
images, legacy functions and response schema. Ground truth for what was served is the mock
upstream's own accounting of each request it received."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import zlib
from typing import Any

import openai
import pytest

from gateway.mock_upstream import answers
from tests.integration.limits.conftest import GatewayFactory
from tests.support.gateway import GatewayInstance

HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens
ROUTE = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 0}}


def _served(entries: list[dict[str, Any]]) -> int:
    """Tokens the mock served (prompt + every choice) for the requests it logged."""
    total = 0
    for e in entries:
        if e["status"] == 200:
            usage = answers.chat_completion(e["body"], model=e["body"]["model"])["usage"]
            total += usage["prompt_tokens"] + usage["completion_tokens"]
    return total


def _png(width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(b"\0" * (1 + width // 8) * height)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw).decode()


# -- item 1: n ---------------------------------------------------------------------------------

def test_every_choice_is_reserved_and_priced(make_gateway: GatewayFactory, tenant: str, upstream_log: Any) -> None:
    priced = tenant + "u"
    # gpt-4o-mini: $0.60 per million output tokens, so 100 x 1000 completion tokens may cost $0.06
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": 1000}},
                              priced: {"budgets": {"usd_per_day": "0.05"}}})
    client = gw.client(tenant)
    # 8 + 128 x 10 does not fit in 1000: refused before any upstream call (it used to be sent, as 8 + 10)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10, n=128, stream=stream)
        assert info.value.code == "insufficient_quota"
    with pytest.raises(openai.RateLimitError) as info:
        gw.client(priced).chat.completions.create(model="chat", messages=HELLO, max_tokens=1000, n=100)
    assert info.value.code == "insufficient_quota"
    assert upstream_log() == []
    gw.client(priced).chat.completions.create(model="chat", messages=HELLO, max_tokens=1000, n=50)  # $0.03 fits
    # 8 + 60 x 10 fits, and is served with every choice
    answer = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10, n=60)
    assert len(answer.choices) == 60 and answer.usage is not None
    assert answer.usage.total_tokens == _served(upstream_log()[-1:]) <= 1000
    # what is left (1000 - 8 - 60 x 5 = 692) does not take 8 + 70 x 10
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10, n=70)


@pytest.mark.parametrize("backend", ["memory+sqlite"], indirect=True)  # no state involved
def test_n_is_bounded_and_shares_the_route_token_budget(make_gateway: GatewayFactory, tenant: str,
                                                        upstream_log: Any) -> None:
    gw = make_gateway({**ROUTE, "budgeted": {**ROUTE["chat"], "token_budget": 108}}, {tenant: {}})
    client = gw.client(tenant)
    for n in (0, 129, 10**6, True, "2"):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="chat", messages=HELLO, n=n)  # type: ignore[arg-type]
        assert info.value.param == "n", n
    assert upstream_log() == []
    client.chat.completions.create(model="budgeted", messages=HELLO, max_tokens=500, n=10)
    body = upstream_log()[-1]["body"]
    assert body["max_tokens"] == (108 - 8) // 10  # each of the 10 choices gets its share
    with pytest.raises(openai.BadRequestError) as info:  # 8 + 101 choices of one token do not fit
        client.chat.completions.create(model="budgeted", messages=HELLO, n=101)
    assert info.value.code == "token_budget_exceeded"


async def _edge_traffic(gw: GatewayInstance, tenant: str, seeds: range) -> list[str]:
    async with gw.async_client(tenant, max_retries=0) as client:
        async def one(i: int) -> str:
            rng = random.Random(i)
            n = rng.choice([1, 2, 7, 32, 64, 100, 128, rng.randint(1, 128)])
            messages = [{"role": "user", "content": f"choices {i}"}]
            try:
                if i % 2:
                    stream = await client.chat.completions.create(model="chat", messages=messages, max_tokens=5, n=n,
                                                                  stream=True, stream_options={"include_usage": True})
                    async for _ in stream:
                        pass
                else:
                    await client.chat.completions.create(model="chat", messages=messages, max_tokens=5, n=n)
                return "ok"
            except openai.RateLimitError as e:
                assert e.code == "insufficient_quota", e
                return "refused"

        return await asyncio.gather(*(one(i) for i in seeds))


def test_concurrent_calls_with_many_choices_never_overspend(make_gateway: GatewayFactory, backend: dict[str, str],
                                                            tenant: str, upstream_log: Any) -> None:
    """100 concurrent calls, n up to 128, streams and not, at the edge of a day's token budget
    (over two gateway processes sharing Redis on the networked pair): the upstream never serves
    more than the budget."""
    budget = 6000
    tenants = {tenant: {"budgets": {"tokens_per_day": budget}}}
    first = make_gateway(ROUTE, tenants)
    gateways = [first]
    if backend["state"] != "memory":
        gateways.append(make_gateway(ROUTE, tenants, root=first.config_path.parent.parent, env=first.env))

    async def all_of_them() -> list[str]:
        share = 100 // len(gateways)
        parts = await asyncio.gather(*(_edge_traffic(g, tenant, range(k * share, (k + 1) * share))
                                       for k, g in enumerate(gateways)))
        return [o for part in parts for o in part]

    outcomes = asyncio.run(all_of_them())
    entries = upstream_log()
    served = _served(entries)
    assert served <= budget, served
    # at the edge: the budget was nearly used up, and the rest refused
    assert outcomes.count("refused") > 0 and served > budget * 0.6, (served, outcomes.count("ok"))
    assert len(entries) == outcomes.count("ok")
    assert max(e["body"]["n"] for e in entries) > 1


# -- item 2: two completion fields -------------------------------------------------------------

def test_the_larger_completion_field_is_reserved_and_every_field_capped(make_gateway: GatewayFactory, tenant: str,
                                                                        upstream_log: Any) -> None:
    gw = make_gateway({**ROUTE, "capped": {**ROUTE["chat"], "max_tokens": 10}},
                      {tenant: {"budgets": {"tokens_per_day": 1000}}})
    http = gw.http(tenant)
    both = {"messages": HELLO, "max_completion_tokens": 1, "max_tokens": 5000}
    r = http.post("/v1/chat/completions", json={"model": "chat", **both})
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"  # 5000 was not reserved
    assert upstream_log() == []
    r = http.post("/v1/chat/completions", json={"model": "capped", **both})
    assert r.status_code == 200, r.text
    body = upstream_log()[-1]["body"]
    assert body["max_tokens"] == 10 and body["max_completion_tokens"] == 1  # the route cap held for both


# -- item 3: what the prompt estimate counts ---------------------------------------------------

def test_an_image_is_counted_by_the_targets_rule(make_gateway: GatewayFactory, tenant: str,
                                                 upstream_log: Any) -> None:
    # gpt-4o-mini bills a 2048x2048 image at high detail 2833 + 4 x 5667 = 25,501 tokens
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": 20000}}})
    image = {"type": "image_url", "image_url": {"url": _png(2048, 2048), "detail": "high"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    with pytest.raises(openai.RateLimitError) as info:
        gw.client(tenant).chat.completions.create(model="chat", messages=messages, max_tokens=5)
    assert info.value.code == "insufficient_quota"
    # at low detail it is 2833: it fits
    image["image_url"]["detail"] = "low"  # type: ignore[index]
    gw.client(tenant).chat.completions.create(model="chat", messages=messages, max_tokens=5)
    assert len(upstream_log()) == 1


@pytest.mark.parametrize("backend", ["memory+sqlite"], indirect=True)  # no state involved
def test_remote_images_audio_files_legacy_functions_and_schemas_are_counted(
        make_gateway: GatewayFactory, tenant: str, upstream_log: Any) -> None:
    gw = make_gateway({"media": {**ROUTE["chat"], "max_input_tokens": 2000},
                       "chat": {**ROUTE["chat"], "max_input_tokens": 100}}, {tenant: {}})
    client = gw.client(tenant)
    parts: list[dict[str, Any]] = [
        # size unknown: 8 tiles at gpt-4o-mini's rate
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        # 250 KB of mp3: up to 2500 tokens (10 a second at 8 kbit/s)
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"\0" * 250_000).decode(),
                                                "format": "mp3"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64," + base64.b64encode(
            b"%PDF-1.4 " * 400).decode(), "filename": "a.pdf"}},
    ]
    for part in parts:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="media", max_tokens=5, messages=[
                {"role": "user", "content": [{"type": "text", "text": "this:"}, part]}])  # type: ignore[list-item]
        assert info.value.code == "context_length_exceeded", part["type"]
    http = gw.http(tenant)
    long = "describe the weather in great detail " * 30  # ~180 tokens
    functions = [{"name": "weather", "description": long, "parameters": {"type": "object"}}]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "properties": {"report": {"type": "string", "description": long}}}}}
    for extra in ({"functions": functions}, {"functions": [{"name": "w"}], "function_call": {"name": long}},
                  {"response_format": schema}):
        r = http.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO, **extra})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", (extra.keys(), r.text)
    assert upstream_log() == []
    r = http.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO, "functions": [{"name": "w"}]})
    assert r.status_code == 200, r.text
