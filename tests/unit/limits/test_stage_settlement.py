"""The limits stage keeps a live call's hold past the reservation ttl, and settles once: the counters
and the Call (so the envelope) get the same tokens and pico-dollars. Clocks are passed in, no sleeps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.limits.stage import Hold, Limits
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.pipeline.record import price_call
from gateway.providers.base import Usage
from gateway.settings import Settings, load_settings
from gateway.store.state.memory import MemoryStateStore

TENANT = {"budgets": {"tokens_per_day": 10**6, "usd_per_day": 100}}
PRICE_IN, PRICE_OUT = 150_000, 600_000


def _settings(root: Path, ttl_s: float) -> Settings:
    (root / "config").mkdir()
    (root / "policies").mkdir()
    (root / "config" / "gateway.yaml").write_text(yaml.safe_dump({
        "providers": {"mock": {"kind": "mock"}},
        "routes": {"chat": {"targets": [{"provider": "mock", "model": "mock-1"}]}},
        "paths": {"policies": "../policies"}, "limits": {"reservation_ttl_s": ttl_s}}))
    (root / "config" / "pricing.yaml").write_text(yaml.safe_dump({
        "prices": {"mock/mock-1": {"input": "0.15", "output": "0.60"}}}))
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {"acme": TENANT}}))
    return load_settings(root / "config" / "gateway.yaml", env={})


@pytest.fixture
def limits(tmp_path: Path) -> Limits:
    return Limits(_settings(tmp_path, ttl_s=2.0), MemoryStateStore(), Metrics())


def _call() -> Call:
    return Call(request_id="r", method="POST", path="/v1/chat/completions", kind="chat", tenant="acme",
                key_id="k", route="chat")


async def _reserve(limits: Limits, call: Call, max_tokens: int = 100) -> Hold:
    body: dict[str, Any] = {"model": "chat", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    hold = await limits.reserve(call, limits.settings.routes["chat"], body)
    assert hold is not None
    return hold


async def _counted(limits: Limits, now: float) -> dict[str, int]:
    plan = limits.plans.get("acme", "k", None, "chat", limits.settings.routes["chat"])
    out: dict[str, int] = {}
    for group in plan.groups:
        out.update(await limits.store.usage(group.buckets(0, 0), now=now))
    return {k.rsplit(".", 1)[1]: v for k, v in out.items()}


async def test_a_live_hold_is_refreshed_until_settled_and_expires_when_no_longer_refreshed(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    t0 = time.time()  # after the reservation (the first one loads the tokenizer)
    reserved = hold.prompt_tokens + hold.completion_tokens
    assert await limits.refresh_due(t0 + 0.4) == 0  # younger than a quarter of the ttl
    assert await limits.refresh_due(t0 + 1.0) == 1
    assert await limits.refresh_due(t0 + 1.2) == 0  # refreshed at t0 + 1.0
    assert await limits.refresh_due(t0 + 2.0) == 1
    assert (await _counted(limits, t0 + 3.9))["tokens_per_day"] == reserved  # past 2 s: still held
    assert (await _counted(limits, t0 + 4.01))["tokens_per_day"] == 0  # 2 s after the last refresh: gone
    await limits.settle(hold, None, None, None, call)  # a late settle still counts what it holds as spent
    assert await limits.refresh_due(t0 + 10) == 0  # settled: no longer refreshed
    assert (await _counted(limits, t0 + 4.02))["tokens_per_day"] == reserved


async def test_released_and_settled_holds_leave_the_live_set(limits: Limits) -> None:
    t0 = time.time()
    first, second = await _reserve(limits, _call()), await _reserve(limits, _call())
    await limits.release(first)
    await limits.settle(second, Usage(1, 1, reported=True), "mock", "mock-1", _call())
    assert await limits.refresh_due(t0 + 100) == 0
    assert (await _counted(limits, t0 + 1))["tokens_per_day"] == 2


async def test_without_reported_usage_the_call_records_the_reservation_the_counters_keep(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call, max_tokens=100)
    await limits.settle(hold, None, "mock", "mock-1", call)
    assert call.settled and call.usage == Usage(hold.prompt_tokens, 100, reported=False)
    assert call.cost_picousd == hold.prompt_tokens * PRICE_IN + 100 * PRICE_OUT
    counted = await _counted(limits, time.time())
    assert counted == {"tokens_per_day": hold.prompt_tokens + 100, "usd_per_day": call.cost_picousd}


async def test_reported_usage_is_priced_once_and_counted_as_recorded(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    usage = Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=2, reported=True)
    call.provider, call.target_model = "mock", "mock-1"
    await limits.settle(hold, usage, "mock", "mock-1", call)
    cost = call.cost_picousd
    assert call.usage is usage and cost == limits.settings.pricing.cost_picousd("mock", "mock-1", 7, 3, 2)
    price_call(call, limits.settings.pricing)  # the envelope's pricing leaves a settled call as it is
    assert call.cost_picousd == cost
    assert await _counted(limits, time.time()) == {"tokens_per_day": 10, "usd_per_day": cost}
