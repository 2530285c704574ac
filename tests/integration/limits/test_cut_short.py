"""Calls that outlive their reservation's ttl, and calls their clients leave: what the budgets count,
what the envelope records and what `gateway report costs` says must be one figure, and never more
than the budget is served. On memory + SQLite and on Redis + PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import openai
import pytest

from tests.integration.limits.conftest import GatewayFactory
from tests.integration.limits.test_ledger_accounting import _mock_usage, _wait_report
from tests.support.gateway import GatewayInstance

ROUTE = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 0}}
HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens (estimate and mock alike); the mock answers 5
PRICE_IN, PRICE_OUT = 150_000, 600_000  # pico-dollars per token of up/gpt-4o-mini
# 22 prompt tokens; the mock streams 19 completion tokens in 13 events, 300 ms apart: ~3.9 s in all.
LONG = [{"role": "user", "content": 'tell me a long story #mock{"chunk_delay_ms": 300}'}]
LONG_PROMPT = 22


def _assert_counted(gw: GatewayInstance, tenant: str, budget: int, counted: int) -> None:
    """The tenant's day token counter holds exactly `counted`: a call reserving one token more than
    is left is refused (nothing spent), and one reserving all that is left is served."""
    client = gw.client(tenant)
    room = budget - counted - 8
    assert room >= 1, (budget, counted)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=room + 1)
    assert info.value.code == "insufficient_quota"
    client.chat.completions.create(model="chat", messages=HELLO, max_tokens=room)


# The mock answers the slow call (23 prompt tokens, as estimated) with 20 tokens after 3.5 s.
SLOW = [{"role": "user", "content": 'tell me a long story #mock{"latency_ms": 3500}'}]


@pytest.mark.parametrize(("stream", "messages", "prompt", "used"), [
    (True, LONG, LONG_PROMPT, LONG_PROMPT + 19),
    (False, SLOW, 23, 23 + 20),
], ids=["stream", "slow-answer"])
def test_a_call_longer_than_the_reservation_ttl_keeps_its_hold(make_gateway: GatewayFactory, tenant: str,
                                                               upstream_log: Any, stream: bool,
                                                               messages: list[dict[str, str]], prompt: int,
                                                               used: int) -> None:
    # Room for the long call's reservation (prompt + 40) and 17 tokens more: while it runs, no call
    # of 8 + 10 fits. Were its hold to expire at the 2 s ttl, four would, and 4 * 13 tokens more than
    # the budget would be served.
    budget = prompt + 40 + 17
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": budget}}}, limits={"reservation_ttl_s": 2})

    async def run() -> tuple[int, list[str]]:
        async with gw.async_client(tenant) as client:
            async def long_call() -> int:
                if not stream:
                    answer = await client.chat.completions.create(model="chat", messages=messages, max_tokens=40)
                    assert answer.usage is not None
                    return answer.usage.total_tokens
                chunks = await client.chat.completions.create(
                    model="chat", messages=messages, max_tokens=40, stream=True,
                    stream_options={"include_usage": True})
                total = 0
                async for chunk in chunks:
                    if chunk.usage is not None:
                        total = chunk.usage.total_tokens
                return total

            async def short() -> str:
                try:
                    await client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
                    return "ok"
                except openai.RateLimitError as e:
                    assert e.code == "insufficient_quota"
                    return "refused"

            running = asyncio.create_task(long_call())
            await asyncio.sleep(2.6)  # past the ttl: the long call still runs
            assert not running.done()
            outcomes = await asyncio.gather(*(short() for _ in range(10)))
            assert not running.done()  # the calls were made while it ran
            return await running, outcomes

    started = time.monotonic()
    long_tokens, outcomes = asyncio.run(run())
    assert time.monotonic() - started > 3  # it outlived the ttl
    served = sum(_mock_usage(e)[0] + _mock_usage(e)[1] for e in upstream_log())
    assert served <= budget, (served, outcomes)
    assert long_tokens == used
    assert outcomes == ["refused"] * 10, outcomes
    # the long call settled at what it used: what it did not use is free again
    _assert_counted(gw, tenant, budget, used)


def test_a_stream_client_that_leaves_is_recorded_as_counted(make_gateway: GatewayFactory, tenant: str,
                                                            upstream_log: Any) -> None:
    budget = 1000
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": budget}}})
    client = gw.client(tenant)

    def leave(rid: str, after_finish: bool) -> None:
        stream = client.chat.completions.create(
            model="chat", messages=LONG, max_tokens=40, stream=True, stream_options={"include_usage": True},
            extra_headers={"x-request-id": rid})
        for i, chunk in enumerate(stream):
            assert chunk.usage is None  # it leaves before the usage chunk
            if (chunk.choices and chunk.choices[0].finish_reason) if after_finish else i == 2:
                break
        stream.close()  # the usage chunk comes 300 ms after the finish reason

    # Read to the finish reason, then leave: the gateway reads on for the usage (the provider bills it).
    leave("left-after-finish", after_finish=True)
    exact = gw.wait_log("left-after-finish")
    assert exact["client_disconnected"] is True and exact["usage_reported"] is True
    assert (exact["prompt_tokens"], exact["completion_tokens"]) == (LONG_PROMPT, 19)
    assert exact["provider"] == "up" and exact["finish_reason"] == "stop"
    # Leave mid-stream: no usage will come, so the reservation stands as spent, and is what is recorded.
    leave("left-mid-stream", after_finish=False)
    cut = gw.wait_log("left-mid-stream")
    assert cut["client_disconnected"] is True and cut["usage_reported"] is False
    assert (cut["prompt_tokens"], cut["completion_tokens"]) == (LONG_PROMPT, 40)
    assert cut["provider"] == "up"

    counted = LONG_PROMPT + 19 + LONG_PROMPT + 40
    totals = _wait_report(gw, tenant, 2)["totals"]
    assert totals["requests"] == 2
    assert totals["prompt_tokens"] + totals["completion_tokens"] == counted
    assert totals["cost_picousd"] == (2 * LONG_PROMPT * PRICE_IN + (19 + 40) * PRICE_OUT)
    mock = [_mock_usage(e) for e in upstream_log()]
    assert sum(p + c for p, c, _ in mock) == counted - (40 - 19)  # the provider's bill, less the unused rest
    _assert_counted(gw, tenant, budget, counted)


def test_a_client_that_times_out_is_recorded_as_counted(make_gateway: GatewayFactory, tenant: str) -> None:
    budget = 1000
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": budget}}})
    slow = [{"role": "user", "content": 'answer slowly #mock{"latency_ms": 3000}'}]
    with pytest.raises(openai.APITimeoutError):
        gw.client(tenant, timeout=1.0).chat.completions.create(
            model="chat", messages=slow, max_tokens=50, extra_headers={"x-request-id": "timed-out"})
    record = gw.wait_log("timed-out")
    assert record["status"] == 499 and record["client_disconnected"] is True
    # what the budget holds as spent: the reservation, against the target that was being called
    assert record["provider"] == "up" and record["usage_reported"] is False
    prompt = record["prompt_tokens"]
    assert prompt > 0 and record["completion_tokens"] == 50
    cost = prompt * PRICE_IN + 50 * PRICE_OUT
    assert record["cost_usd"] == f"{cost / 10**12:.6f}"
    totals = _wait_report(gw, tenant, 1)["totals"]
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (1, prompt, 50)
    assert totals["cost_picousd"] == cost
    _assert_counted(gw, tenant, budget, prompt + 50)


# Two processes share holds only through Redis; a memory store's holds die with their process.
@pytest.mark.parametrize("backend", ["redis+postgres"], indirect=True)
def test_a_hold_left_by_a_killed_process_still_expires(make_gateway: GatewayFactory, backend: dict[str, str],
                                                       tenant: str) -> None:
    budget = LONG_PROMPT + 40 + 17
    tenants = {tenant: {"budgets": {"tokens_per_day": budget}}}
    first = make_gateway(ROUTE, tenants, limits={"reservation_ttl_s": 3})
    second = make_gateway(ROUTE, tenants, root=first.config_path.parent.parent, env=first.env,
                          limits={"reservation_ttl_s": 3})
    started = time.monotonic()
    stream = first.client(tenant).chat.completions.create(model="chat", messages=LONG, max_tokens=40, stream=True)
    next(iter(stream))
    held_by = time.monotonic()  # the hold was made between `started` and now
    os.kill(first.process.pid, signal.SIGKILL)  # mid-stream: nothing will settle or refresh its hold
    first.process.stop()
    client = second.client(tenant)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)
    assert time.monotonic() - started < 3, "too slow to see the hold before it expired"
    time.sleep(max(0.0, held_by + 3.2 - time.monotonic()))
    client.chat.completions.create(model="chat", messages=HELLO, max_tokens=10)  # the hold expired with its ttl


def test_without_limits_a_call_cut_short_records_the_best_estimate(make_gateway: GatewayFactory,
                                                                   tenant: str) -> None:
    gw = make_gateway(ROUTE, {tenant: {}})  # nothing is reserved: the record is the gateway's estimate
    stream = gw.client(tenant).chat.completions.create(
        model="chat", messages=LONG, max_tokens=40, stream=True, extra_headers={"x-request-id": "cut-stream"})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    cut = gw.wait_log("cut-stream")
    assert cut["client_disconnected"] is True and cut["usage_reported"] is False and cut["provider"] == "up"
    assert cut["prompt_tokens"] == LONG_PROMPT  # the prompt estimate
    assert 3 <= cut["completion_tokens"] <= 13  # a token for each chunk relayed
    slow = [{"role": "user", "content": 'answer slowly #mock{"latency_ms": 3000}'}]
    with pytest.raises(openai.APITimeoutError):
        gw.client(tenant, timeout=1.0).chat.completions.create(
            model="chat", messages=slow, max_tokens=50, extra_headers={"x-request-id": "cut-answer"})
    timed_out = gw.wait_log("cut-answer")
    assert timed_out["provider"] == "up" and timed_out["usage_reported"] is False
    assert timed_out["prompt_tokens"] > 0 and timed_out["completion_tokens"] == 0
    totals = _wait_report(gw, tenant, 2)["totals"]
    assert totals["prompt_tokens"] == cut["prompt_tokens"] + timed_out["prompt_tokens"]
    assert totals["completion_tokens"] == cut["completion_tokens"]
    assert totals["cost_picousd"] == totals["prompt_tokens"] * PRICE_IN + totals["completion_tokens"] * PRICE_OUT
