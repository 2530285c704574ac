"""The reservation strategy: how the Limits stage holds, settles, releases and refreshes, chosen
once for the state store at construction (`reservations_for`), so the stage reads the same for both.

- `LocalReservations` (limits/local.py), the memory store in this process: holds on the plan's
  lanes, the record handed over (no ids), every call synchronous. Nothing it does suspends, so
  no cancellation can cut a settlement short, and it makes no coroutine on the request path.
- `NetworkedReservations` (limits/networked.py), Redis or any networked store: a reservation id
  per attempt, the store's atomic scripts, and settlement shielded from cancellation.

The calls a request makes (`reserve`, `settle`, `release`) answer at once when they did their
work without suspending (the memory store) and hand back an awaitable otherwise: the stage
awaits it, or hands it on to a caller that wants no coroutine when nothing needs to suspend
(`Limits.settle_now`). What `settle` and `release` return is already shielded (a task runs it
to the end even if its awaiter is cancelled or never awaits). The rarer calls (`again`, after a
timeout; `refresh`, from the background refresher) are coroutines for both.

A strategy enters each hold it makes in the live holds it was given (dict: hold -> when it was
made, time.time()), which the refresher (limits/refresh.py) walks; the stage removes it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from gateway.limits.hold import Hold
from gateway.limits.local import LocalReservations
from gateway.limits.networked import NetworkedReservations
from gateway.limits.plan import LimitsPlan
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.settings import Settings
from gateway.store.state.base import StateStore, StateUnavailable
from gateway.store.state.memory import MemoryStateStore


class Reservations(Protocol):
    def reserve(self, plan: LimitsPlan, prompt: int, completion: int, usd: int, call: Call
                ) -> Hold | Awaitable[Hold | None]:
        """Hold (prompt + completion tokens, usd) on every group of `plan` and enter the hold in the
        live holds; the x-ratelimit-* headers go on `call`. A refusal raises (what was held is
        released first). An awaitable's None: nothing was held (the store was down, fail-open)."""
        ...

    def settle(self, hold: Hold, tokens: int, usd: int) -> Awaitable[None] | None:
        """Each sunk reservation settled whole, then the hold at (tokens, usd)."""
        ...

    def release(self, hold: Hold) -> Awaitable[None] | None:
        """What the hold holds now given back; its sunk reservations settled whole (they were spent)."""
        ...

    async def again(self, hold: Hold, sunk: Hold) -> bool:
        """The hold's current reservation was moved to `sunk` (now on hold.sunk, still held): reserve
        as much again on the same groups into `hold`. False when that does not fit or the store
        cannot be reached; then the hold holds nothing new (what was held meanwhile is released)."""
        ...

    async def refresh(self, due: list[Hold], now: float) -> StateUnavailable | None:
        """Extend each hold in `due` and its sunk reservations by the ttl from `now`; the last
        error of a store that could not be reached (each is counted in the metrics)."""
        ...


def reservations_for(store: StateStore, settings: Settings, live: dict[Hold, float], metrics: Metrics
                     ) -> Reservations:
    if isinstance(store, MemoryStateStore):
        return LocalReservations(store, settings.limits.reservation_ttl_s, live, metrics)
    return NetworkedReservations(store, settings, live, metrics)
