"""Live holds outlive the reservation ttl: a call may run longer than `reservation_ttl_s` (a long
stream, a slow upstream), and its hold must not expire while it runs, or its room would be
handed to others while it still spends.

Live holds are kept in one insertion-ordered dict, hold -> when it was made or last refreshed
(time.time()): a dict insert at reserve (by the strategy), a pop at settle (by the stage), nothing
per request beyond that. One task (`run`) refreshes every hold older than a quarter of the ttl,
each time the same quarter passes: a hold is refreshed when at most half its ttl has gone by. A
crashed process refreshes nothing, so what it held still expires.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.limits.hold import Hold
from gateway.limits.reservations import Reservations

_log = logging.getLogger("gateway.limits")

# The refresh loop never wakes more often than this, whatever the ttl (a ttl that short could not
# be kept anyway: it would expire holds between two turns of a busy event loop).
_MIN_REFRESH_EVERY_S = 0.05


class Refresher:
    __slots__ = ("_reservations", "_ttl_s", "live")

    def __init__(self, live: dict[Hold, float], reservations: Reservations, ttl_s: float) -> None:
        self.live = live
        self._reservations = reservations
        self._ttl_s = ttl_s

    async def run(self) -> None:
        """Run for the gateway's life: every quarter of the ttl, refresh the holds at least that old."""
        every = max(self._ttl_s / 4, _MIN_REFRESH_EVERY_S)
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh_due(time.time())
            except Exception:  # a background loop's boundary: one bad pass must not end the refreshing
                _log.exception("refreshing live reservations failed")

    async def refresh_due(self, now: float) -> int:
        """Refresh every live hold made or last refreshed a quarter of the ttl ago or more; how many."""
        live = self.live
        before = now - self._ttl_s / 4
        due: list[Hold] = []
        for hold, at in live.items():
            if at > before:
                break  # the rest are younger
            due.append(hold)
        for hold in due:  # to the back of the line first: a settle during an await below pops it
            del live[hold]
            live[hold] = now
        failed = await self._reservations.refresh(due, now) if due else None
        if failed is not None:  # one line a pass, however many holds it could not refresh
            _log.error("state store unreachable; live reservations were not refreshed (they expire if it stays so)",
                       extra={"fields": {"error": str(failed)[:300]}})
        return len(due)
