"""Attempts that timed out while the provider worked: their reservations stand as spent, a further
attempt reserves anew, and every reservation is refreshed until the call settles, then counted once
(on the counters and the Call alike). Memory store, clocks passed in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from gateway.limits.stage import Limits
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Attempt
from gateway.providers.base import Usage
from gateway.store.state.base import Decision
from tests.unit.limits.test_stage_settlement import _call, _counted, _reserve, _settings, limits  # noqa: F401


def _timed_out() -> Attempt:
    return Attempt("mock", "mock-1", status=504, error="UpstreamTimeout")


async def test_a_sunk_reservation_is_refreshed_then_settled_with_the_answer(limits: Limits) -> None:  # noqa: F811
    call = _call()
    hold = await _reserve(limits, call)
    t0 = time.time()
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert await limits.again(hold)
    assert (await _counted(limits, t0))["tokens_per_day"] == 2 * reserved
    assert await limits.refresh_due(t0 + 1.0) == 1
    assert (await _counted(limits, t0 + 2.5))["tokens_per_day"] == 2 * reserved  # both kept past the ttl
    await limits.settle(hold, Usage(3, 4, reported=True), "mock", "mock-1", call)
    assert (await _counted(limits, t0 + 2.6))["tokens_per_day"] == reserved + 7
    assert call.usage.total_tokens == reserved + 7 and not call.usage.reported
    assert await limits.refresh_due(t0 + 10) == 0
    assert limits._live == {}


async def test_every_attempt_timed_out_counts_every_reservation(limits: Limits) -> None:  # noqa: F811
    call = _call()
    hold = await _reserve(limits, call)
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert await limits.again(hold)
    call.attempts.append(_timed_out())  # the last attempt timed out too (no again: none follows)
    await limits.fail(hold, call)
    assert (await _counted(limits, time.time()))["tokens_per_day"] == 2 * reserved
    assert call.settled and call.usage.total_tokens == 2 * reserved and call.provider == "mock"
    assert limits._live == {}


async def test_an_attempt_after_a_timeout_that_failed_otherwise_is_released(limits: Limits) -> None:  # noqa: F811
    call = _call()
    hold = await _reserve(limits, call)
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert await limits.again(hold)
    call.attempts.append(Attempt("mock", "mock-1", status=503, error="UpstreamUnavailable"))
    await limits.fail(hold, call)
    assert (await _counted(limits, time.time()))["tokens_per_day"] == reserved
    assert call.usage.total_tokens == reserved
    assert limits._live == {}


async def test_another_attempt_that_does_not_fit_is_not_reserved(limits: Limits) -> None:  # noqa: F811
    call = _call()
    hold = await _reserve(limits, call, max_tokens=600_000)  # more than half the day's 10**6 tokens
    reserved = hold.prompt_tokens + hold.completion_tokens
    call.attempts.append(_timed_out())
    assert not await limits.again(hold)
    await limits.fail(hold, call)
    assert (await _counted(limits, time.time()))["tokens_per_day"] == reserved
    assert limits._live == {}


class _SlowStore:
    """A networked store's calls, each reserve waiting for `go`: what a cancellation can cut."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.held: dict[str, int] = {}

    async def reserve(self, rid: str, group: Any, ttl_s: float) -> Decision:
        if self.held:  # the first reservation passes at once; the next ones wait
            await self.go.wait()
        self.held[rid] = sum(b.amount for b in group)
        return Decision(True, None, None, {}, {})

    async def release(self, rid: str, group: Any) -> None:
        self.held.pop(rid, None)

    async def settle(self, rid: str, group: Any, actual: Any) -> None:
        self.held[rid] = -1  # settled (spent)

    async def refresh(self, rid: str, group: Any, ttl_s: float, now: float) -> None:
        pass


async def test_a_client_leaving_while_the_next_attempt_is_reserved_leaves_no_hold(tmp_path: Path) -> None:
    store = _SlowStore()
    lim = Limits(_settings(tmp_path, ttl_s=2.0), store, Metrics())  # type: ignore[arg-type]
    call = _call()
    hold = await _reserve(lim, call)
    call.attempts.append(_timed_out())
    again = asyncio.ensure_future(lim.again(hold))
    await asyncio.sleep(0)  # the new reservation is on its way
    again.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await again
    await lim.fail(hold, call)  # the request ends: the first reservation is spent
    store.go.set()  # the reservation in flight lands after the call ended
    for _ in range(5):
        await asyncio.sleep(0)
    assert list(store.held.values()) == [-1]  # only the sunk reservation, settled
    assert lim._live == {}
