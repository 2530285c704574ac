"""Concurrency limits: a bulkhead per provider and the non-blocking in-flight caps.

A bulkhead keeps one slow provider from tying up every connection and task: at most `limit`
calls at once, and a short, bounded, first-come-first-served wait for a slot beyond that.
InFlightCaps never waits: ingress answers 429 at once when the gateway or a tenant is full.

Both live inside one event loop, so plain integers suffice and every call is O(1).
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal


class Bulkhead:
    __slots__ = ("_waiters", "in_flight", "limit", "max_waiters", "name", "rejected", "timed_out", "wait_timeout_s")

    def __init__(self, name: str, limit: int, *, max_waiters: int, wait_timeout_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if max_waiters < 0:
            raise ValueError("max_waiters must be >= 0")
        if not (math.isfinite(wait_timeout_s) and wait_timeout_s >= 0):
            raise ValueError("wait_timeout_s must be a number >= 0")
        self.name = name
        self.limit = limit
        self.max_waiters = max_waiters
        self.wait_timeout_s = wait_timeout_s
        self.in_flight = 0  # slots held, including slots handed to a waiter that has not run yet
        self.rejected = 0  # acquire() returned False, at once or after waiting
        self.timed_out = 0  # ...of which after waiting the full wait_timeout_s
        # Pending waiters in arrival order. An OrderedDict pops the oldest and removes a
        # cancelled or timed-out one in O(1), where a deque would need a scan.
        self._waiters: OrderedDict[asyncio.Future[bool], None] = OrderedDict()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free slot without waiting; False when none is free (nothing is counted)."""
        # With waiters queued every slot is taken (release hands slots over), but checking
        # keeps a newcomer from ever overtaking the queue.
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> bool:
        """True: a slot is held and the caller must release() it. False: rejected or timed out."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1  # the fast path: no future, no await
            return True
        if len(self._waiters) >= self.max_waiters or self.wait_timeout_s <= 0:
            self.rejected += 1
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters[waiter] = None
        timer = loop.call_later(self.wait_timeout_s, self._expire, waiter)
        try:
            granted = await waiter
        except asyncio.CancelledError:
            timer.cancel()
            if waiter.cancelled():
                self._waiters.pop(waiter, None)  # release() may already have skipped and dropped it
            elif waiter.result():
                # The handoff race: release() gave us its slot, then we were cancelled before
                # we could run. The slot is ours, so pass it on instead of leaking it.
                self.release()
            raise
        timer.cancel()
        if not granted:
            self.rejected += 1
            self.timed_out += 1
        return granted

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            del self._waiters[waiter]
            waiter.set_result(False)

    def release(self) -> None:
        if self.in_flight <= 0:
            # A double release would silently raise the limit; fail loudly instead.
            raise RuntimeError(f"bulkhead {self.name!r}: release() without a matching acquire()")
        waiters = self._waiters
        while waiters:
            waiter = waiters.popitem(last=False)[0]
            # A waiter cancelled a moment ago is still queued until its task runs: skip it.
            if not waiter.done():
                waiter.set_result(True)  # hand the slot over; in_flight stays the same
                return
        self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit": self.limit,
            "in_flight": self.in_flight,
            "waiting": len(self._waiters),
            "max_waiters": self.max_waiters,
            "wait_timeout_s": self.wait_timeout_s,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
        }


class InFlightCaps:
    """Counts requests in flight against a global cap and per-key (tenant) caps; never waits.

    `limit` None means no global cap. A key's cap comes from `per_key`, else `default_per_key`,
    else it has none (it is still counted). A key's counter is dropped when it returns to 0,
    so the table holds only keys with requests in flight.
    """

    __slots__ = ("_by_key", "default_per_key", "in_flight", "limit", "per_key")

    def __init__(
        self, limit: int | None, per_key: Mapping[str, int] | None = None, default_per_key: int | None = None
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        if default_per_key is not None and default_per_key < 0:
            raise ValueError("default_per_key must be >= 0")
        per_key = dict(per_key or {})
        for key, cap in per_key.items():
            if cap < 0:
                raise ValueError(f"per_key[{key!r}] must be >= 0")
        self.limit = limit
        self.per_key = per_key
        self.default_per_key = default_per_key
        self.in_flight = 0
        self._by_key: dict[str, int] = {}

    def try_enter(self, key: str | None = None) -> Literal["ok", "global", "key"]:
        """"ok" (both counters incremented), or why not: "key" is checked first, since a tenant
        over its own cap is refused whatever the load of the others."""
        if key is not None:
            n = self._by_key.get(key, 0)
            cap = self.per_key.get(key, self.default_per_key)
            if cap is not None and n >= cap:
                return "key"
            if self.limit is not None and self.in_flight >= self.limit:
                return "global"
            self._by_key[key] = n + 1
        elif self.limit is not None and self.in_flight >= self.limit:
            return "global"
        self.in_flight += 1
        return "ok"

    def leave(self, key: str | None = None) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("InFlightCaps.leave() without a matching try_enter()")
        if key is not None:
            n = self._by_key.get(key, 0)
            if n <= 0:
                raise RuntimeError(f"InFlightCaps.leave({key!r}) without a matching try_enter()")
            if n == 1:
                del self._by_key[key]
            else:
                self._by_key[key] = n - 1
        self.in_flight -= 1

    def in_flight_for(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "keys": {
                key: {"in_flight": n, "limit": self.per_key.get(key, self.default_per_key)}
                for key, n in sorted(self._by_key.items())
            },
        }
