"""Budgets, rate limits and input limits through a running gateway, on both storage pairs."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.integration.limits.conftest import GatewayFactory

HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens; the mock answers 5
ROUTE = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 0}}


def test_token_budget_refuses_what_does_not_fit(make_gateway: GatewayFactory, tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": 100}}})
    client = gw.client(tenant)
    served = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(20):
            answer = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
            served += answer.usage.total_tokens
    # each call reserves 8 + 10 and settles to 13: seven fit in 100, the eighth (91 + 18) does not
    assert served == 7 * 13
    assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_requests_without_max_tokens_get_a_bound(make_gateway: GatewayFactory, tenant: str,
                                                 upstream_log: Any) -> None:
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_month": 100000}}},
                      limits={"default_max_tokens": 321})
    gw.client(tenant).chat.completions.create(model="chat", messages=HELLO)
    assert upstream_log()[-1]["body"]["max_tokens"] == 321


def test_rate_limits_answer_429_with_openai_headers(make_gateway: GatewayFactory, tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {"rate_limits": {"requests_per_minute": 3, "tokens_per_minute": 10000}}})
    client = gw.client(tenant)
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO, max_tokens=10)
        # settlement runs after the answer is sent: the client closing then is not a disconnect
        record = gw.wait_log(raw.headers["x-request-id"])
        assert record["status"] == 200 and "client_disconnected" not in record
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(2 - i)
        assert raw.headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 10000
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
    headers = info.value.response.headers
    assert info.value.code == "rate_limit_exceeded"
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_usd_budget(make_gateway: GatewayFactory, tenant: str) -> None:
    # one call: 8 * 0.15 + 10 * 0.60 = 7.2 micro-dollars reserved; settles to 8 * 0.15 + 5 * 0.60 = 4.2
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"usd_per_day": "0.00002"}}})
    client = gw.client(tenant)
    done = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(10):
            client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
            done += 1
    assert done == 4 and info.value.code == "insufficient_quota"  # 3 * 4.2 + 7.2 = 19.8 fits; 4 * 4.2 + 7.2 not


def test_route_budget_spans_tenants(make_gateway: GatewayFactory, tenant: str) -> None:
    other = tenant + "b"
    routes = {"chat": {**ROUTE["chat"], "budget": {"tokens_per_day": 60}}}
    gw = make_gateway(routes, {tenant: {}, other: {}})
    gw.client(tenant).chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
    gw.client(other).chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
    gw.client(tenant).chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
    with pytest.raises(openai.RateLimitError):  # 3 * 13 = 39, + 18 = 57 fits; then 52 + 18 does not
        for _ in range(3):
            gw.client(other).chat.completions.create(model="chat", messages=HELLO, max_tokens=10)


def test_feature_and_key_budgets(make_gateway: GatewayFactory, tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {"features": {"summarize": {"budgets": {"tokens_per_day": 20}}},
                                       "keys": {f"env:TENANT_{tenant.upper()}_KEY": {
                                           "rate_limits": {"requests_per_minute": 5}}}}})
    client = gw.client(tenant)
    feature = {"x-gateway-feature": "summarize"}
    client.chat.completions.create(model="chat", messages=HELLO, max_tokens=5, extra_headers=feature)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=5, extra_headers=feature)
    client.chat.completions.create(model="chat", messages=HELLO, max_tokens=5)  # other features are free
    for _ in range(3):
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as info:  # the key's 5 requests a minute are used
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=5)
    assert info.value.code == "rate_limit_exceeded"


def test_max_input_tokens_refuses_before_any_upstream_call(make_gateway: GatewayFactory, tenant: str,
                                                            upstream_log: Any) -> None:
    gw = make_gateway({"chat": {**ROUTE["chat"], "max_input_tokens": 50}}, {tenant: {}})
    with pytest.raises(openai.BadRequestError) as info:
        gw.client(tenant).chat.completions.create(model="chat", messages=[{"role": "user", "content": "word " * 80}])
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
    assert upstream_log() == []


def test_failed_calls_release_their_reservation(make_gateway: GatewayFactory, tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": 30}}})
    client = gw.client(tenant)
    for _ in range(4):  # (a fifth in a row would open the breaker)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="chat", max_tokens=10,
                                           messages=[{"role": "user", "content": 'x #mock{"status": 500}'}])
    client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)  # nothing was spent


def test_streams_settle_at_their_end(make_gateway: GatewayFactory, tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": 60}}})
    client = gw.client(tenant)
    for _ in range(4):  # 4 * 13 = 52 (each reserves 18, settles 13)
        stream = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO, max_tokens=10,
                                                                   stream=True)
        list(stream.parse())
        record = gw.wait_log(stream.headers["x-request-id"])
        assert record["status"] == 200 and "client_disconnected" not in record
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10, stream=True))
    time.sleep(0.1)


@pytest.mark.parametrize("backend", ["redis+postgres"], indirect=True)  # memory cannot be unreachable
def test_state_store_down_fails_closed_for_budgets_and_open_for_rate_limits(
        make_gateway: GatewayFactory, backend: dict[str, str], tenant: str) -> None:
    import httpx

    from tests.support.tcpproxy import ThreadedTcpProxy

    proxy = ThreadedTcpProxy("127.0.0.1", 6379)
    proxy.start()
    try:
        state = backend["state"].replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
        budgeted, limited = tenant, tenant + "r"
        gw = make_gateway(ROUTE, {budgeted: {"budgets": {"tokens_per_day": 10_000}},
                                  limited: {"rate_limits": {"requests_per_minute": 100}}}, storage={"state": state})
        assert gw.client(budgeted).chat.completions.create(model="chat", messages=HELLO, max_tokens=5).choices
        proxy.cut()
        with pytest.raises(openai.InternalServerError) as info:
            gw.client(budgeted).chat.completions.create(model="chat", messages=HELLO, max_tokens=5)
        assert info.value.status_code == 503 and info.value.code == "limits_unavailable"
        assert info.value.response.headers["retry-after"]
        # rate limits fail open by default: served unchecked, and said so in the log and metrics
        assert gw.client(limited).chat.completions.create(model="chat", messages=HELLO, max_tokens=5).choices
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["state"] == "unreachable"
        assert 'gateway_state_errors_total{outcome="open"}' in httpx.get(gw.url + "/metrics").text
        proxy.restore()
        deadline = time.monotonic() + 10
        while True:
            try:
                gw.client(budgeted).chat.completions.create(model="chat", messages=HELLO, max_tokens=5)
                break
            except openai.InternalServerError:
                assert time.monotonic() < deadline, "limits did not recover with the state store"
                time.sleep(0.2)
    finally:
        proxy.stop()
