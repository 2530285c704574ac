"""A body too deep to forward is refused without spending the tenant's budget or the target's health.

It is refused after the reservation (the provider request is encoded by the router), so the hold
must be released, and the refusal is the client's fault: no breaker verdict, on either back end.
"""

from __future__ import annotations

import httpx
import orjson

from tests.integration.limits.conftest import GatewayFactory

HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens; the mock answers 5
ROUTE = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 0}}
DEEP = b"[" * 300 + b"]" * 300


def _deep_body(field: str) -> bytes:
    return orjson.dumps({"model": "chat", "messages": HELLO, "max_tokens": 10})[:-1] + \
        b',"' + field.encode() + b'":' + DEEP + b"}"


def test_deep_bodies_spend_nothing_and_open_no_breaker(make_gateway: GatewayFactory, tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": 30}}})
    with httpx.Client(base_url=gw.url, timeout=10, headers={"authorization": f"Bearer {gw.key(tenant)}",
                                                            "content-type": "application/json"}) as http:
        for _ in range(8):  # more than the breaker's consecutive failures
            r = http.post("/v1/chat/completions", content=_deep_body("metadata_x"))
            assert r.status_code == 400 and r.json()["error"]["code"] == "nesting_too_deep", r.text
        for stream in (False, True):
            body = orjson.loads(orjson.dumps({"model": "chat", "messages": HELLO, "max_tokens": 10, "stream": stream}))
            raw = orjson.dumps(body)[:-1] + b',"stream_options":{"x":' + DEEP + b"}}" if stream else \
                orjson.dumps(body)[:-1] + b',"tools":[{"type":"function","function":{"name":"f","parameters":' + \
                DEEP + b"}}]}"
            r = http.post("/v1/chat/completions", content=raw)
            assert r.status_code == 400 and r.json()["error"]["code"] == "nesting_too_deep", r.text
    # 8 + 10 of 30 tokens: fits only if every refused call released its hold; and the target is healthy.
    gw.client(tenant).chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
