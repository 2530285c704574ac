"""The bounded pool that counts large prompts off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from gateway.errors import BadRequest
from gateway.limits.estimate import estimate_prompt
from gateway.limits.offload import INLINE_MAX_BYTES, EstimatorBusy, OffLoopCounter
from gateway.limits.stage import Limits
from gateway.limits.tokens import count_messages, get_encoding
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.settings import load_settings
from gateway.store.state.base import state_store_from_url


async def _max_gap_while(job: asyncio.Future[object]) -> float:
    """The longest the loop went without running this coroutine while `job` was pending."""
    gap, last = 0.0, time.perf_counter()
    while not job.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    return gap


async def test_tiktoken_releases_the_gil_so_the_loop_runs_while_it_counts() -> None:
    get_encoding("o200k_base")  # loaded at start-up in the gateway (loading holds the GIL)
    counter = OffLoopCounter(threads=1)
    text = "a" * 1_000_000  # one unbroken word: ~0.4 s of BPE
    messages = [{"role": "user", "content": text}]
    started = time.perf_counter()
    job = asyncio.ensure_future(counter.run(count_messages, messages, "gpt-4o"))
    gap = await _max_gap_while(job)
    took = time.perf_counter() - started
    assert await job == count_messages(messages, "gpt-4o") == 1_000_000 // 8 + 7
    assert took > 0.1 and gap < 0.05, (took, gap)
    counter.close()


async def test_the_off_loop_estimate_is_the_inline_estimate() -> None:
    counter = OffLoopCounter(threads=2)
    targets = [("openai", "gpt-4o-mini"), ("openai", "gpt-4"), ("anthropic", "claude-3-5-haiku")]
    bodies = [
        {"messages": [{"role": "user", "content": "x" * 50_000}]},
        {"messages": [{"role": "system", "content": "Be brief. " * 3000},
                      {"role": "user", "content": "hi", "name": "b"}],
         "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "ünï ✓ " * 5000}]}]},
    ]
    for body in bodies:
        off = await counter.run(estimate_prompt, body, targets, 0.2)
        assert off == estimate_prompt(body, targets, 0.2)
    counter.close()


async def test_past_its_slots_a_count_waits_a_bounded_time_then_503() -> None:
    counter = OffLoopCounter(threads=1, wait_s=0.05)
    gate = threading.Event()
    first = asyncio.ensure_future(counter.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    with pytest.raises(EstimatorBusy) as info:
        await counter.run(len, "x")
    assert info.value.status == 503 and info.value.error_code == "estimator_busy"
    assert float(info.value.headers["retry-after"]) >= 1
    gate.set()
    assert await first is True
    assert await counter.run(len, "xyz") == 3  # the slot came back
    counter.close()


async def test_a_caller_that_leaves_keeps_its_slot_until_its_thread_is_done() -> None:
    # Otherwise clients that disconnect could pile counts up behind the pool's threads.
    counter = OffLoopCounter(threads=1, wait_s=0.05)
    gate = threading.Event()
    job = asyncio.ensure_future(counter.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert counter.running == 1
    with pytest.raises(EstimatorBusy):
        await counter.run(len, "x")
    gate.set()
    for _ in range(200):
        if counter.running == 0:
            break
        await asyncio.sleep(0.005)
    assert await counter.run(len, "x") == 1
    counter.close()


async def test_an_error_in_the_count_reaches_the_caller_and_frees_the_slot() -> None:
    counter = OffLoopCounter(threads=1, wait_s=0.05)

    def refuse() -> None:
        raise BadRequest("too long", param="messages", code="context_length_exceeded")

    for _ in range(3):
        with pytest.raises(BadRequest):
            await counter.run(refuse)
    assert counter.running == 0
    counter.close()


async def test_one_tenants_flood_delays_another_tenant_by_one_count_at_most() -> None:
    counter = OffLoopCounter(threads=1, wait_s=5)
    gate = threading.Event()
    order: list[str] = []

    def count(who: str) -> str:
        gate.wait(5)
        order.append(who)
        return who

    flood = [asyncio.ensure_future(counter.run(count, "evil", lane="evil")) for _ in range(5)]
    await asyncio.sleep(0.01)
    other = asyncio.ensure_future(counter.run(count, "good", lane="good"))
    await asyncio.sleep(0.01)
    gate.set()
    assert await other == "good"
    await asyncio.gather(*flood)
    # "good" came after five of "evil"'s counts, but only one of them was ahead of it for a slot.
    assert order.index("good") == 1, order
    assert counter._lanes == {}  # idle lanes are dropped
    counter.close()


async def test_a_lane_that_times_out_or_leaves_gives_its_places_back() -> None:
    counter = OffLoopCounter(threads=1, wait_s=0.05)
    gate = threading.Event()
    first = asyncio.ensure_future(counter.run(gate.wait, 5, lane="a"))
    await asyncio.sleep(0.01)
    with pytest.raises(EstimatorBusy):
        await counter.run(len, "x", lane="a")
    waiting = asyncio.ensure_future(counter.run(len, "x", lane="b"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.set()
    assert await first is True
    for _ in range(200):
        if not counter._lanes:
            break
        await asyncio.sleep(0.005)
    assert counter._lanes == {} and counter.running == 0
    assert await counter.run(len, "xy", lane="a") == 2
    counter.close()


def test_the_inline_bound_keeps_the_worst_inline_count_short() -> None:
    # A body of INLINE_MAX_BYTES holds no text longer than that; counting the worst such text (one
    # unbroken word) must stay around a millisecond (5 ms allows for a loaded machine).
    enc = get_encoding("o200k_base")
    word = "a" * INLINE_MAX_BYTES
    best = min(_timed(enc.encode_ordinary, word) for _ in range(5))
    assert best < 0.005, best


def _timed(fn: object, arg: str) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


async def test_a_large_prompt_refused_for_a_busy_pool_is_counted_and_a_later_one_is_estimated(
        tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "policies").mkdir()
    path = tmp_path / "config" / "gateway.yaml"
    path.write_text("providers: {m: {kind: mock}}\nroutes: {r: {targets: [{provider: m, model: gpt-4o-mini}]}}\n")
    (tmp_path / "policies" / "tenants.yaml").write_text("tenants: {acme: {budgets: {tokens_per_day: 10000000}}}\n")
    settings = load_settings(path, env={})
    metrics = Metrics()
    limits = Limits(settings, state_store_from_url("memory"), metrics)
    limits.counter = OffLoopCounter(threads=1, wait_s=0.05)
    body = {"messages": [{"role": "user", "content": "word " * 5000}]}

    def new_call() -> Call:
        call = Call("req", "POST", "/v1/chat/completions", kind="chat", tenant="acme", route="r")
        call.body_bytes = INLINE_MAX_BYTES + 1
        return call

    gate = threading.Event()
    blocker = asyncio.ensure_future(limits.counter.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    with pytest.raises(EstimatorBusy):
        await limits.reserve(new_call(), settings.routes["r"], body)
    assert metrics.rejected.labels("estimator_busy")._value.get() == 1
    gate.set()
    await blocker
    call = new_call()
    hold = await limits.reserve(call, settings.routes["r"], body)
    assert hold is not None and call.prompt_estimate == estimate_prompt(body, [("mock", "gpt-4o-mini")], 0.0)
    await limits.release(hold)
    limits.counter.close()
