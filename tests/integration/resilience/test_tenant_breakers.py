"""One tenant cannot open a shared target's breaker for everyone (issue 12, item 14).

Tenant "evil" sends requests whose content makes the real mock upstream answer 500. On a target
other tenants share, only "evil" is shed; an upstream failing for everyone still opens the
target's breaker for all.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.resilience.conftest import GatewayFactory, Upstream
from tests.integration.resilience.test_drills import _webhook_receiver
from tests.support.gateway import GatewayInstance

HELLO = [{"role": "user", "content": "hello"}]
POISON = [{"role": "user", "content": "hello #mock" + json.dumps({"status": 500})}]
SOLO = {"solo": {"targets": [{"provider": "primary", "model": "gpt-4o-mini"}], "retries": 0, "deadline_s": 3}}
TARGET = "primary/gpt-4o-mini"
TENANTS = {"evil": {"routes": ["*"]}, "good": {"routes": ["*"]}, "late": {"routes": ["*"]}}


def _breaker(gw_url: str, admin_key: str) -> dict:
    data = httpx.get(gw_url + "/admin/breakers", headers={"authorization": f"Bearer {admin_key}"}).json()["data"]
    return next(b for b in data if b["target"] == TARGET)


def test_one_tenants_poisoned_requests_open_nothing_for_the_others(make_gateway: GatewayFactory,
                                                                   upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    received: list[dict[str, Any]] = []
    hook = _webhook_receiver(received)
    try:
        gw = make_gateway(SOLO, tenants=TENANTS, resilience={"webhook_url": hook.url})
        _poison_one_tenant(gw, primary)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(m["breaker"]["tenant"], m["breaker"]["to"]) for m in received] == [("evil", "open")]
        assert f"{TARGET} for tenant evil is now open" in received[0]["text"]
    finally:
        hook.stop()


def _poison_one_tenant(gw: GatewayInstance, primary: Upstream) -> None:
    evil, good = gw.client("evil"), gw.client("good")
    codes = []
    for _ in range(8):
        with pytest.raises(openai.APIStatusError) as info:
            evil.chat.completions.create(model="solo", messages=POISON)
        codes.append(info.value.status_code)
    assert codes == [502] * 5 + [503] * 3  # five upstream 500s, then "evil" is shed
    assert len(primary.requests()) == 5
    for _ in range(5):  # before the fix: 503 no_target_available for the whole cooldown
        assert good.chat.completions.with_raw_response.create(
            model="solo", messages=HELLO).headers["x-gateway-provider"] == "primary"
    gw.client("late").chat.completions.create(model="solo", messages=HELLO)

    breaker = _breaker(gw.url, gw.admin_key)
    assert breaker["state"] == "closed" and breaker["min_tenants"] == 2
    assert [(t["tenant"], t["state"]) for t in breaker["tenants"]] == [("evil", "open")]
    metrics = httpx.get(gw.url + "/metrics").text
    assert f'gateway_tenant_breaker_state{{target="{TARGET}",tenant="evil"}} 2.0' in metrics
    assert f'gateway_breaker_state{{target="{TARGET}"}}' not in metrics  # the shared breaker never moved
    logged = [(r.get("tenant"), r["to"]) for r in gw.log_lines() if r.get("logger") == "gateway.breaker"]
    assert logged == [("evil", "open")]


def test_an_upstream_failing_for_everyone_still_opens_the_shared_breaker(
        make_gateway: GatewayFactory, upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(error_rate=1.0, error_statuses=[500])
    gw = make_gateway(SOLO, tenants=TENANTS)
    for tenant in ("evil", "good"):
        client = gw.client(tenant)
        for _ in range(5):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="solo", messages=HELLO)
    assert len(primary.requests()) == 10
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:  # a tenant that never failed is shed at once
        gw.client("late").chat.completions.create(model="solo", messages=HELLO)
    assert info.value.status_code == 503 and info.value.code == "no_target_available"
    assert time.monotonic() - started < 0.5 and len(primary.requests()) == 10
    breaker = _breaker(gw.url, gw.admin_key)
    assert breaker["state"] == "open"
    assert {t["tenant"]: t["state"] for t in breaker["tenants"]} == {"evil": "open", "good": "open"}
    metrics = httpx.get(gw.url + "/metrics").text
    assert f'gateway_breaker_transitions_total{{target="{TARGET}",to_state="open"}} 1.0' in metrics


def test_a_target_only_one_tenant_reaches_keeps_one_breaker(make_gateway: GatewayFactory) -> None:
    routes = {**SOLO, "other": {"targets": [{"provider": "secondary", "model": "gpt-4o-mini"}]}}
    gw = make_gateway(routes, tenants={"evil": {"routes": ["solo"]}, "good": {"routes": ["other"]}})
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            gw.client("evil").chat.completions.create(model="solo", messages=POISON)
    breaker = _breaker(gw.url, gw.admin_key)
    assert breaker["state"] == "open" and breaker["min_tenants"] == 1 and breaker["tenants"] == []


def test_a_hostile_tenant_cannot_keep_a_recovered_target_shut(make_gateway: GatewayFactory,
                                                              upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(error_rate=1.0, error_statuses=[500])  # an outage: every tenant fails
    gw = make_gateway(SOLO, tenants=TENANTS)
    for tenant in ("late", "good"):
        for _ in range(5):
            with pytest.raises(openai.InternalServerError):
                gw.client(tenant).chat.completions.create(model="solo", messages=HELLO)
    assert _breaker(gw.url, gw.admin_key)["state"] == "open"
    primary.faults()  # the upstream is back
    time.sleep(1.1)  # the cooldown (1 s) passes
    with pytest.raises(openai.InternalServerError):  # "evil" takes the probe and poisons it
        gw.client("evil").chat.completions.create(model="solo", messages=POISON)
    for _ in range(3):  # the others are served: the probe failure was "evil"'s alone
        gw.client("good").chat.completions.create(model="solo", messages=HELLO)
    assert _breaker(gw.url, gw.admin_key)["state"] == "closed"
