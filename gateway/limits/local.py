"""Reservations in the memory store of this process (see limits/reservations.py): each group is
held on its plan's `Lane` and the store hands the record (`Held`) over, so a hold needs no id and
settles by the record. Every method here runs to completion without suspending: no lock, no
shield, and no coroutine on the request path (reserve, settle, release answer at once)."""

from __future__ import annotations

import time

from gateway.limits.hold import Hold
from gateway.limits.plan import LimitsPlan
from gateway.limits.refusal import lane_headers, refusal
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.store.state.base import Decision, StateUnavailable
from gateway.store.state.memory import MemoryStateStore


class LocalReservations:
    __slots__ = ("_live", "_metrics", "_store", "_ttl_s")

    def __init__(self, store: MemoryStateStore, ttl_s: float, live: dict[Hold, float], metrics: Metrics) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._live = live
        self._metrics = metrics

    def reserve(self, plan: LimitsPlan, prompt: int, completion: int, usd: int, call: Call) -> Hold:
        tokens = prompt + completion
        hold = Hold("", [], prompt, completion, usd)
        store, ttl, parts = self._store, self._ttl_s, hold.parts
        now = time.time()
        for group_plan in plan.groups:
            left: list[int] = []
            held = store.hold_lane(group_plan.lane, group_plan.spent(tokens, usd), ttl, now, left)
            if isinstance(held, Decision):
                self._give_back(hold)
                raise refusal(held, group_plan.buckets(tokens, usd), group_plan, self._metrics)
            parts.append((group_plan, held))
            call.extra_headers += lane_headers(group_plan, left, now)
        self._live[hold] = now
        return hold

    def settle(self, hold: Hold, tokens: int, usd: int) -> None:
        if hold.sunk:
            self._settle_sunk(hold)
        store = self._store
        for group_plan, held in hold.parts:
            store.settle_held(held, group_plan.spent(tokens, usd))

    def release(self, hold: Hold) -> None:
        if hold.sunk:
            self._settle_sunk(hold)
        self._give_back(hold)

    async def again(self, hold: Hold, sunk: Hold) -> bool:
        tokens, usd = hold.prompt_tokens + hold.completion_tokens, hold.usd_picousd
        store, ttl = self._store, self._ttl_s
        now = time.time()
        for group_plan, _ in sunk.parts:
            held = store.hold_lane(group_plan.lane, group_plan.spent(tokens, usd), ttl, now, [])
            if isinstance(held, Decision):
                self._give_back(hold)
                hold.parts = []
                return False
            hold.parts.append((group_plan, held))
        return True

    async def refresh(self, due: list[Hold], now: float) -> StateUnavailable | None:
        store, ttl = self._store, self._ttl_s
        for hold in due:
            for part in (hold, *hold.sunk):
                for _, held in part.parts:
                    store.refresh_held(held, ttl, now)
        return None

    def _settle_sunk(self, hold: Hold) -> None:
        """Each sunk reservation counted as spent, whole (no provider said what it cost)."""
        store = self._store
        for sunk in hold.sunk:
            tokens = sunk.prompt_tokens + sunk.completion_tokens
            for group_plan, held in sunk.parts:
                store.settle_held(held, group_plan.spent(tokens, sunk.usd_picousd))

    def _give_back(self, hold: Hold) -> None:
        """What the hold holds now, released (its sunk reservations are not touched)."""
        store = self._store
        for group_plan, held in hold.parts:
            store.settle_held(held, group_plan.nothing)
