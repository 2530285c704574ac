"""The embedded state store: budgets and rate limits in this process's memory.

Every method runs to completion without an await, so in one event loop each reserve is atomic
without a lock: no other request can run between the check and the hold. It mirrors the Redis
store's layout and rules one for one (see redis.py): per counter the units used (settled + held)
and the live holds; per reservation a record of where it held what.

Memory stays bounded. Counters and records carry the absolute time they may be dropped, fixed by
their period (or by the reservation's ttl). Counters (a few per period) sit on a heap, rebuilt
when stale entries outnumber them; records, one per request, sit in two queues in the order they
expire: held ones in an ordered dict (a record leaves it the moment it is settled, in O(1)), done
ones in a FIFO (one fixed window). Each call pops a few expired entries from each, so no call
ever pays for a mass expiry, and nothing is swept per request. Expired holds leave a counter when
it is next reserved on.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Final

from gateway.store.state.base import (
    Bucket,
    Decision,
    check_buckets,
    check_reserve_args,
    check_settle_args,
)
from gateway.store.state.periods import (
    DEFAULT_SETTLE_GRACE_S,
    MEMORY_DONE_TTL_S,
    MIN_KEY_TTL_S,
    Slot,
    decide,
    fits,
    slots_of,
    used,
)

# Expired counters/records dropped per call at most, so one call never pays for a mass expiry.
_GC_BATCH = 64

_CounterId = tuple[str, str, str]  # (hash tag, bucket key, stamp)
_RecordId = tuple[str, str]  # (hash tag, reservation id)


class _Counter:
    __slots__ = ("expires_at", "heap", "holds", "used")

    def __init__(self, expires_at: float) -> None:
        self.expires_at = expires_at
        self.used = 0  # settled + held
        self.holds: dict[str, tuple[int, float]] = {}  # reservation id -> (amount, expires at)
        # (expires at, reservation id); entries of settled holds stay until popped or rebuilt.
        self.heap: list[tuple[float, str]] = []

    def purge(self, now: float) -> None:
        heap, holds = self.heap, self.holds
        while heap and heap[0][0] <= now:
            exp, rid = heapq.heappop(heap)
            held = holds.get(rid)
            if held is not None and held[1] == exp:
                del holds[rid]
                self.used -= held[0]

    def drop_hold(self, rid: str) -> None:
        held = self.holds.pop(rid, None)
        if held is None:
            return
        self.used -= held[0]
        if len(self.heap) > 2 * len(self.holds) + 16:
            self.heap = [(exp, r) for r, (_, exp) in self.holds.items()]
            heapq.heapify(self.heap)


class _Record:
    __slots__ = ("done", "expires_at", "fields", "hold_expires_at")

    def __init__(self, expires_at: float, hold_expires_at: float) -> None:
        self.expires_at = expires_at
        self.hold_expires_at = hold_expires_at
        self.done = False  # every bucket settled or released (fields then empty)
        # bucket key -> (stamp, amount) while held; None once that bucket is settled or released.
        self.fields: dict[str, tuple[str, int] | None] = {}


_MISSING: Final = ("", -1)


class MemoryStateStore:
    __slots__ = ("_counters", "_done", "_gc", "_held", "_records", "_seq", "done_ttl_s", "settle_grace_s")
    in_process = True

    def __init__(
        self, *, settle_grace_s: float = DEFAULT_SETTLE_GRACE_S, done_ttl_s: float = MEMORY_DONE_TTL_S
    ) -> None:
        self.settle_grace_s = settle_grace_s
        self.done_ttl_s = done_ttl_s
        self._counters: dict[_CounterId, _Counter] = {}
        self._records: dict[_RecordId, _Record] = {}
        # Counters by expiry: (expires at, sequence, ident).
        self._gc: list[tuple[float, int, _CounterId]] = []
        # Held records -> their expiry, oldest first (the ttl is the same for every call in practice;
        # one out of order is only collected later, lookups check expiry themselves).
        self._held: OrderedDict[_RecordId, float] = OrderedDict()
        # Done records: (expires at, ident), in order (one window for all).
        self._done: deque[tuple[float, _RecordId]] = deque()
        self._seq = 0

    def __repr__(self) -> str:
        return "MemoryStateStore()"

    # -- bookkeeping -------------------------------------------------------------------------

    def _schedule(self, expires_at: float, ident: _CounterId) -> None:
        self._seq += 1
        heapq.heappush(self._gc, (expires_at, self._seq, ident))

    def _collect(self, now: float) -> None:
        gc = self._gc
        for _ in range(_GC_BATCH):
            if not gc or gc[0][0] > now:
                break
            ident = heapq.heappop(gc)[2]
            # The entry may be stale: the counter was replaced.
            c = self._counters.get(ident)
            if c is not None and c.expires_at <= now:
                del self._counters[ident]
        if len(gc) > 2 * len(self._counters) + 1024:
            self._sweep(now)
        held = self._held
        for _ in range(_GC_BATCH):
            if not held:
                break
            rid_ident, expires_at = next(iter(held.items()))
            if expires_at > now:
                break
            del held[rid_ident]
            self._drop_record_if_expired(rid_ident, now)
        done = self._done
        for _ in range(_GC_BATCH):
            if not done or done[0][0] > now:
                break
            self._drop_record_if_expired(done.popleft()[1], now)

    def _drop_record_if_expired(self, ident: _RecordId, now: float) -> None:
        r = self._records.get(ident)
        if r is not None and r.expires_at <= now:
            del self._records[ident]

    def _sweep(self, now: float) -> None:
        """Drop expired counters and rebuild their heap from what lives: O(n), after >= n pushes."""
        self._counters = {k: c for k, c in self._counters.items() if c.expires_at > now}
        self._seq = 0
        entries: list[tuple[float, int, _CounterId]] = []
        for ck, c in self._counters.items():
            self._seq += 1
            entries.append((c.expires_at, self._seq, ck))
        heapq.heapify(entries)
        self._gc = entries

    def _counter(self, ident: _CounterId, now: float) -> _Counter | None:
        c = self._counters.get(ident)
        if c is not None and c.expires_at <= now:
            del self._counters[ident]
            return None
        return c

    def _new_counter(self, ident: _CounterId, expires_at: float, now: float) -> _Counter:
        c = _Counter(max(expires_at, now + MIN_KEY_TTL_S))
        self._counters[ident] = c
        self._schedule(c.expires_at, ident)
        return c

    def _used(self, ident: _CounterId, now: float) -> int:
        c = self._counter(ident, now)
        if c is None:
            return 0
        c.purge(now)
        return c.used

    def _record(self, ident: _RecordId, now: float) -> _Record | None:
        r = self._records.get(ident)
        if r is not None and r.expires_at <= now:
            self._forget(ident)
            return None
        return r

    def _forget(self, ident: _RecordId) -> None:
        del self._records[ident]
        self._held.pop(ident, None)

    def stats(self) -> dict[str, int]:
        """Sizes of the internal tables, for tests and debugging."""
        return {
            "counters": len(self._counters),
            "holds": sum(len(c.holds) for c in self._counters.values()),
            "records": len(self._records),
            "gc_entries": len(self._gc) + len(self._held) + len(self._done),
        }

    # -- the StateStore protocol -------------------------------------------------------------

    async def reserve(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> Decision:
        tag = check_buckets(buckets)
        check_reserve_args(reservation_id, ttl_s)
        now = time.time() if now is None else now
        self._collect(now)
        if not buckets:
            return Decision(True, None, None, {}, {})
        rid_ident = (tag, reservation_id)
        held = False
        rec = self._record(rid_ident, now)
        if rec is not None:
            held = _already_held(rec, buckets, reservation_id, now)
            if not held:
                self._forget(rid_ident)
        slots = slots_of(buckets, now)
        counts: list[tuple[int, int]] = []
        failed: int | None = None
        for i, (b, s) in enumerate(zip(buckets, slots, strict=True)):
            cur = self._used((tag, b.key, s.stamp), now)
            prev = self._used((tag, b.key, s.prev_stamp), now) if b.kind == "window" else 0
            counts.append((cur, prev))
            if failed is None and not held and not fits(b, cur, prev, s.rem_ms):
                failed = i
        if failed is None and not held:
            self._hold(tag, reservation_id, buckets, slots, now, now + ttl_s)
        return decide(buckets, slots, counts, failed, held)

    def _hold(
        self, tag: str, rid: str, buckets: Sequence[Bucket], slots: Sequence[Slot], now: float, hold_exp: float
    ) -> None:
        rec = _Record(hold_exp + self.settle_grace_s, hold_exp)
        for b, s in zip(buckets, slots, strict=True):
            if b.amount > 0:  # a zero hold changes no count; the record still says where to settle
                ident = (tag, b.key, s.stamp)
                c = self._counter(ident, now) or self._new_counter(ident, s.expires_at, now)
                c.used += b.amount
                c.holds[rid] = (b.amount, hold_exp)
                heapq.heappush(c.heap, (hold_exp, rid))
            rec.fields[b.key] = (s.stamp, b.amount)
        rid_ident = (tag, rid)
        self._records[rid_ident] = rec
        self._held[rid_ident] = rec.expires_at
        self._held.move_to_end(rid_ident)

    async def settle(
        self, reservation_id: str, buckets: Sequence[Bucket], actual: Mapping[str, int], now: float | None = None
    ) -> None:
        tag = check_settle_args(reservation_id, buckets, actual)
        now = time.time() if now is None else now
        self._collect(now)
        if not buckets:
            return
        rid_ident = (tag, reservation_id)
        rec = self._record(rid_ident, now)
        if rec is not None and rec.done:
            return
        fields = rec.fields if rec is not None else {}
        for b, s in zip(buckets, slots_of(buckets, now), strict=True):
            v = fields.get(b.key, _MISSING)
            if v is None:
                continue  # this bucket was settled or released before
            if v is _MISSING:
                # Unknown here (never reserved, or its record is long gone): the usage is real,
                # so it counts now.
                stamp, reserved, expires_at = s.stamp, b.amount, s.expires_at
            else:
                stamp, reserved = v
                expires_at = s.expires_at if stamp == s.stamp else s.prev_expires_at if stamp == s.prev_stamp else 0.0
            spent = actual.get(b.name, reserved)
            # A hold older than the previous period or minute sits in a counter nothing reads again.
            if expires_at:
                ident = (tag, b.key, stamp)
                c = self._counter(ident, now)
                if c is not None:
                    c.drop_hold(reservation_id)  # already purged if it expired: never subtracted twice
                if spent:
                    (c or self._new_counter(ident, expires_at, now)).used += spent
            fields[b.key] = None
        if any(v is not None for v in fields.values()):
            return  # some of the reservation's buckets are still held
        # Every bucket is done: remember only that, for the idempotency window.
        done_at = now + self.done_ttl_s
        self._held.pop(rid_ident, None)
        if rec is None:
            rec = self._records[rid_ident] = _Record(done_at, 0.0)
            self._done.append((done_at, rid_ident))
        elif done_at < rec.expires_at:
            rec.expires_at = done_at
            self._done.append((done_at, rid_ident))
        else:
            self._held[rid_ident] = rec.expires_at  # it expires before the window would end: keep its place
        rec.done = True
        rec.fields = {}

    async def release(self, reservation_id: str, buckets: Sequence[Bucket], now: float | None = None) -> None:
        await self.settle(reservation_id, buckets, {b.name: 0 for b in buckets}, now)

    async def usage(self, buckets: Sequence[Bucket], now: float | None = None) -> dict[str, int]:
        tag = check_buckets(buckets)
        now = time.time() if now is None else now
        self._collect(now)
        out: dict[str, int] = {}
        for b, s in zip(buckets, slots_of(buckets, now), strict=True):
            cur = self._used((tag, b.key, s.stamp), now)
            prev = self._used((tag, b.key, s.prev_stamp), now) if b.kind == "window" else 0
            out[b.name] = used(b, cur, prev, s.rem_ms)
        return out

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._counters.clear()
        self._records.clear()
        self._gc.clear()
        self._held.clear()
        self._done.clear()


def _already_held(rec: _Record, buckets: Sequence[Bucket], rid: str, now: float) -> bool:
    """A live record for this id: True if it is still holding exactly these buckets (a repeated
    reserve), False if its hold expired unsettled (the id may be reused); otherwise ValueError."""
    if rec.done or any(v is None for v in rec.fields.values()):
        raise ValueError(f"reservation id {rid!r} was already settled or released")
    if rec.hold_expires_at <= now:
        return False
    if all(b.key in rec.fields for b in buckets):
        return True
    raise ValueError(f"reservation id {rid!r} is holding other buckets")
