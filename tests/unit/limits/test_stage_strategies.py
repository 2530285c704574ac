"""The Limits stage reads the same for both reservation strategies: the memory store's lanes
(LocalReservations) and Redis's ids (NetworkedReservations). Each test runs on both and checks
what the counters and the Call got: settle, fail and release count exactly once, whatever else
follows; the sunk reservations of timed-out attempts (`again`) are counted whole with the hold.
Redis is the shared test server (its absence fails the test, as in the state store tests).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.limits.local import LocalReservations
from gateway.limits.networked import NetworkedReservations
from gateway.limits.stage import Limits
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Attempt
from gateway.providers.base import Usage
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.redis import RedisStateStore
from tests.integration.store_state.conftest import REDIS_URL, delete_prefix, require_redis
from tests.unit.limits.test_stage_settlement import PRICE_IN, PRICE_OUT, _call, _counted, _reserve, _settings


@pytest.fixture(params=["memory", "redis"])
async def limits(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Limits]:
    settings = _settings(tmp_path, ttl_s=30.0)
    if request.param == "memory":
        yield Limits(settings, MemoryStateStore(), Metrics())
        return
    require_redis()
    prefix = f"gwtest:{os.urandom(6).hex()}:"
    store = RedisStateStore(REDIS_URL, prefix=prefix)
    try:
        yield Limits(settings, store, Metrics())
    finally:
        await store.aclose()
        await delete_prefix(prefix)


def _timed_out() -> Attempt:
    return Attempt("mock", "mock-1", status=504, error="UpstreamTimeout")


async def _tokens(limits: Limits) -> int:
    return (await _counted(limits, time.time()))["tokens_per_day"]


async def test_the_strategy_is_the_store_s(limits: Limits) -> None:
    local = isinstance(limits.store, MemoryStateStore)
    assert isinstance(limits._reservations, LocalReservations if local else NetworkedReservations)
    hold = await _reserve(limits, _call())
    assert (hold.reservation_id == "") is local  # lanes need no id; a networked store finds a hold by one


async def test_a_settlement_counts_once_whatever_follows(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    usage = Usage(5, 6, reported=True)
    await limits.settle(hold, usage, "mock", "mock-1", call)
    await limits.settle(hold, Usage(500, 600, reported=True), "mock", "mock-1", call)
    await limits.fail(hold, call)
    await limits.release(hold)
    assert await _tokens(limits) == 11
    assert call.usage is usage and call.cost_picousd == 5 * PRICE_IN + 6 * PRICE_OUT
    assert limits._live == {}


async def test_a_release_gives_everything_back_once(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    assert await _tokens(limits) == hold.prompt_tokens + hold.completion_tokens
    await limits.release(hold)
    await limits.release(hold)
    await limits.settle(hold, Usage(5, 6, reported=True), "mock", "mock-1", call)
    assert await _tokens(limits) == 0 and not call.settled
    assert limits._live == {}


async def test_a_failure_without_a_timeout_releases_once(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    call.attempts.append(Attempt("mock", "mock-1", status=503, error="UpstreamUnavailable"))
    await limits.fail(hold, call)
    await limits.fail(hold, call)
    await limits.settle(hold, None, "mock", "mock-1", call)
    assert await _tokens(limits) == 0 and not call.settled


async def test_a_last_attempt_that_timed_out_is_counted_whole_once(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    call.attempts.append(_timed_out())
    await limits.fail(hold, call)
    await limits.fail(hold, call)
    reserved = hold.prompt_tokens + hold.completion_tokens
    assert await _tokens(limits) == reserved
    assert call.settled and call.usage.total_tokens == reserved and not call.usage.reported


async def test_sunk_reservations_are_counted_whole_with_the_answer(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    reserved = hold.prompt_tokens + hold.completion_tokens
    for _ in range(2):  # two attempts timed out, each reserved anew for the next
        call.attempts.append(_timed_out())
        assert await limits.again(hold)
    assert await _tokens(limits) == 3 * reserved
    assert await limits.refresh_due(time.time() + 10) == 1  # one live hold, its sunk ones refreshed with it
    await limits.settle(hold, Usage(3, 4, reported=True), "mock", "mock-1", call)
    await limits.fail(hold, call)
    assert await _tokens(limits) == 2 * reserved + 7
    assert call.usage.total_tokens == 2 * reserved + 7 and not call.usage.reported
    assert call.cost_picousd == 2 * hold.usd_picousd + 3 * PRICE_IN + 4 * PRICE_OUT
    assert limits._live == {}


async def test_sunk_reservations_stand_as_spent_when_the_next_attempt_failed_otherwise(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert await limits.again(hold)
    call.attempts.append(Attempt("mock", "mock-1", status=503, error="UpstreamUnavailable"))
    await limits.fail(hold, call)
    await limits.release(hold)
    assert await _tokens(limits) == reserved and call.usage.total_tokens == reserved


async def test_a_release_after_a_timeout_counts_the_sunk_reservation(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert await limits.again(hold)
    await limits.release(hold)  # (a caller that gives up after a timeout: what the provider had is spent)
    assert await _tokens(limits) == reserved
    assert limits._live == {}


async def test_another_attempt_that_does_not_fit_holds_nothing_new(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call, max_tokens=600_000)  # more than half the day's 10**6 tokens
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert not await limits.again(hold)
    assert await _tokens(limits) == reserved
    await limits.fail(hold, call)
    assert await _tokens(limits) == reserved and call.usage.total_tokens == reserved


async def test_the_now_variants_do_the_work_without_a_coroutine_on_the_memory_store(limits: Limits) -> None:
    local = isinstance(limits.store, MemoryStateStore)
    settled, failed, released = _call(), _call(), _call()
    holds = [await _reserve(limits, c) for c in (settled, failed, released)]
    failed.attempts.append(_timed_out())
    pending = [limits.settle_now(holds[0], Usage(1, 2, reported=True), "mock", "mock-1", settled),
               limits.fail_now(holds[1], failed), limits.release_now(holds[2])]
    assert settled.settled and settled.usage.total_tokens == 3  # the Call is written before any await
    assert failed.settled
    if local:
        assert pending == [None, None, None]
        assert await _tokens(limits) == 3 + holds[1].prompt_tokens + holds[1].completion_tokens
    else:
        assert all(isinstance(p, asyncio.Future) for p in pending)  # shielded: already running as tasks
        for p in pending:
            await p  # type: ignore[misc]
        assert await _tokens(limits) == 3 + holds[1].prompt_tokens + holds[1].completion_tokens
    assert limits.settle_now(holds[0], None, None, None) is None  # done: nothing more, either way
    assert limits.fail_now(holds[1], failed) is None and limits.release_now(holds[2]) is None


async def test_a_settlement_whose_awaiter_is_cancelled_still_counts(limits: Limits) -> None:
    call = _call()
    hold = await _reserve(limits, call)
    task = asyncio.ensure_future(limits.settle(hold, Usage(5, 6, reported=True), "mock", "mock-1", call))
    await asyncio.sleep(0)  # under way (a networked store's settlement is waiting for Redis)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    # The shielded settlement finishes on its own (a networked store's, as a task of its own).
    under_way = [t for t in asyncio.all_tasks()
                 if getattr(t.get_coro(), "__qualname__", "").startswith("NetworkedReservations.")]
    assert len(under_way) == (0 if isinstance(limits.store, MemoryStateStore) else 1)
    if under_way:
        await asyncio.wait(under_way)
    assert await _tokens(limits) == 11
