"""Reservations in a networked state store (Redis; see limits/reservations.py): each attempt's
reservation has a random id, each group is reserved by the store's atomic script, and what holds
or spends is found again by (id, buckets).

Settling and releasing are shielded (`asyncio.shield`: a task that runs to the end): a client
that leaves cancels its request, but a settlement cut short would let the reservation expire and
the spend be forgotten. A store that cannot be reached is counted in the metrics and logged; what
it held then expires by itself. Reserving while it is down follows `limits.on_state_error`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from gateway.ids import random_hex
from gateway.limits.hold import Hold
from gateway.limits.plan import GroupPlan, LimitsPlan
from gateway.limits.refusal import ratelimit_headers, refusal, state_down
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.settings import Settings
from gateway.store.state.base import Bucket, StateStore, StateUnavailable

_log = logging.getLogger("gateway.limits")
_releasing: set[asyncio.Future[None]] = set()  # releases of abandoned reservations, under way


class NetworkedReservations:
    __slots__ = ("_live", "_metrics", "_policy", "_store", "_ttl_s")

    def __init__(self, store: StateStore, settings: Settings, live: dict[Hold, float], metrics: Metrics) -> None:
        self._store = store
        self._ttl_s = settings.limits.reservation_ttl_s
        self._policy = settings.limits.on_state_error
        self._live = live
        self._metrics = metrics

    async def reserve(self, plan: LimitsPlan, prompt: int, completion: int, usd: int, call: Call) -> Hold | None:
        """Shielded, as `again` is: a request cancelled while its reservation is on its way (the client
        left) would leave what the store reserved counted until it expired; it is released instead,
        once the store has answered."""
        task = asyncio.ensure_future(self._reserve(plan, prompt, completion, usd, call))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, task: asyncio.Future[Hold | None]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # (a refusal or a store error holds nothing)
        hold = task.result()
        if hold is None:
            return
        hold.done = True
        self._live.pop(hold, None)
        release = asyncio.ensure_future(self._release(hold))
        _releasing.add(release)  # a task is kept alive only by a reference
        release.add_done_callback(_releasing.discard)

    async def _reserve(self, plan: LimitsPlan, prompt: int, completion: int, usd: int, call: Call) -> Hold | None:
        tokens = prompt + completion
        hold = Hold(random_hex(12), [], prompt, completion, usd)
        for group_plan in plan.groups:
            group = group_plan.buckets(tokens, usd)
            try:
                decision = await self._store.reserve(hold.reservation_id, group, self._ttl_s)
            except StateUnavailable as e:
                if self._unchecked_allowed(group, e):
                    continue
                await asyncio.shield(self._release(hold))
                raise state_down() from None
            if not decision.ok:
                await asyncio.shield(self._release(hold))
                raise refusal(decision, group, group_plan, self._metrics)
            hold.parts.append((group_plan, group))
            call.extra_headers += ratelimit_headers(decision, group, group_plan)
        if not hold.parts:
            return None
        self._live[hold] = time.time()
        return hold

    def _unchecked_allowed(self, group: tuple[Bucket, ...], error: StateUnavailable) -> bool:
        has_budget = any(b.kind == "period" for b in group)
        policy = self._policy
        allowed = (not has_budget or policy.budgets == "open") and policy.rate_limits == "open"
        self._metrics.state_errors.labels("open" if allowed else "closed").inc()
        _log.error("state store unreachable; limits %s", "skipped (fail-open)" if allowed else "refused (fail-closed)",
                   extra={"fields": {"error": str(error)[:300]}})
        return allowed

    def settle(self, hold: Hold, tokens: int, usd: int) -> Awaitable[None]:
        return asyncio.shield(self._settle_all(hold, tokens, usd) if hold.sunk else self._settle(hold, tokens, usd))

    def release(self, hold: Hold) -> Awaitable[None]:
        return asyncio.shield(self._release_all(hold) if hold.sunk else self._release(hold))

    async def _settle(self, hold: Hold, actual_tokens: int, actual_usd: int) -> None:
        for group_plan, group in hold.parts:
            try:
                await self._store.settle(hold.reservation_id, group, group_plan.actual(actual_tokens, actual_usd))
            except StateUnavailable:
                self._metrics.state_errors.labels("settle").inc()
                _log.error("state store unreachable at settlement; the reservation will expire")

    async def _settle_sunk(self, hold: Hold) -> None:
        """Each sunk reservation settled as spent, whole."""
        for sunk in hold.sunk:
            await self._settle(sunk, sunk.prompt_tokens + sunk.completion_tokens, sunk.usd_picousd)

    async def _settle_all(self, hold: Hold, tokens: int, usd: int) -> None:
        await self._settle_sunk(hold)
        await self._settle(hold, tokens, usd)

    async def _release(self, hold: Hold) -> None:
        for _, group in hold.parts:
            try:
                await self._store.release(hold.reservation_id, group)
            except StateUnavailable:
                self._metrics.state_errors.labels("release").inc()

    async def _release_all(self, hold: Hold) -> None:
        await self._release(hold)
        await self._settle_sunk(hold)

    async def again(self, hold: Hold, sunk: Hold) -> bool:
        hold.reservation_id = random_hex(12)
        for group_plan, group in sunk.parts:
            if not await asyncio.shield(self._hold_again(hold, group_plan, group)):
                # (a reserve that failed holds nothing; the ones before it are released)
                if not hold.done:
                    await asyncio.shield(self._release(hold))
                    hold.parts = []
                return False
        return True

    async def _hold_again(self, hold: Hold, group_plan: GroupPlan, group: tuple[Bucket, ...]) -> bool:
        """One group's new reservation, put on the hold where its settlement or release finds it.
        Shielded by the caller: when the call ended while it was on its way (the client left), what it
        got is released here, as nothing else would (it would count until it expired)."""
        rid = hold.reservation_id
        try:
            decision = await self._store.reserve(rid, group, self._ttl_s)
        except StateUnavailable:
            return False
        if not decision.ok:
            return False
        if hold.done:
            try:
                await self._store.release(rid, group)
            except StateUnavailable:
                self._metrics.state_errors.labels("release").inc()
            return False
        hold.parts.append((group_plan, group))
        return True

    async def refresh(self, due: list[Hold], now: float) -> StateUnavailable | None:
        failed: StateUnavailable | None = None
        ttl = self._ttl_s
        for hold in due:
            for part in (hold, *hold.sunk):
                for _, group in part.parts:
                    if hold.done:  # settled while an earlier refresh was on its way: nothing left to keep
                        break
                    try:
                        await self._store.refresh(part.reservation_id, group, ttl, now)
                    except StateUnavailable as e:
                        self._metrics.state_errors.labels("refresh").inc()
                        failed = e
        return failed
