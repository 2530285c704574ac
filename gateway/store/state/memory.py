"""The embedded state store: budgets and rate limits in this process's memory.

Every method runs to completion without an await, so in one event loop each reserve is atomic
without a lock: no other request can run between the check and the hold. It follows the Redis
store's rules one for one (see redis.py), with a layout built for one process: a counter is only
the units used (settled + held); what a reservation holds, and until when, lives in its record
alone. Settling or expiring a hold subtracts it through the record, once, so counters carry no
per-request entries.

A caller in this process that reserves the same group of buckets again and again and keeps its
holds itself (the limits stage) uses a `Lane` (`hold_lane`, `settle_held`) instead of reservation
ids: the lane keeps each bucket's span and counters for the current period, so a reservation makes
no Bucket, works out no period and looks nothing up until a period ends or a counter is made or
dropped; the record is handed to the caller, so it needs no id and no idempotency marker (the
caller settles its hold once). Same counters, same arithmetic, same expiry.

Memory stays bounded and nothing is swept per request. Counters carry the absolute time they may
be dropped (their period's end, on a heap); records, one per request, wait in queues in the order
they expire: holding ones in an ordered dict (a record leaves it the moment it is settled, in
O(1)), settled and abandoned ones in FIFOs. `_due` is the earliest time any queue needs attention,
so a call before it does no bookkeeping at all. When it comes, every expired hold is given back
before the call reads a counter (so a refusal is always exact), and a bounded batch of dead
records and counters is dropped. Dead records and counters are only memory: once none is left
over, they are next looked at `_GC_INTERVAL_S` later at the earliest, not on every request.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.store.state.base import (
    Bucket,
    CheckedBuckets,
    Decision,
    SeedValue,
    check_actual,
    check_buckets,
    check_reserve_args,
)
from gateway.store.state.periods import (
    DEFAULT_SETTLE_GRACE_S,
    MEMORY_DONE_TTL_S,
    MIN_KEY_TTL_S,
    WINDOW_MS,
    Slot,
    Span,
    decide,
    fits,
    slots_of,
    span_at,
    used,
    window_weight_ms,
)

# Dead records and counters dropped per call at most, so one call never pays for a mass expiry.
# (Expired holds are never deferred: they change what a reserve sees.)
_GC_BATCH = 64
# Dropping what is dead (not expiring holds) waits at least this long after a pass that left
# nothing over: at 3,000 requests/s a done marker expires every 0.3 ms, and a pass per request
# cost more than the markers it dropped.
_GC_INTERVAL_S = 0.05

_CounterId = tuple[str, str, str]  # (hash tag, bucket key, stamp)
_RecordId = tuple[str, str]  # (hash tag, reservation id)


class _Counter:
    __slots__ = ("expires_at", "used")

    def __init__(self, expires_at: float) -> None:
        self.expires_at = expires_at
        self.used = 0  # settled + held


# What a record holds in one bucket: (stamp of its counter, units held, that counter if one
# was made, the bucket); replaced by None once settled or released.
_Entry = tuple[str, int, "_Counter | None", Bucket]


class _Record:
    __slots__ = ("done", "expires_at", "fields", "hold_expires_at", "holding", "ident", "open", "tag")

    def __init__(self, tag: str, ident: _RecordId | None, expires_at: float, hold_expires_at: float) -> None:
        self.tag = tag
        self.ident = ident  # None: a lane's hold, kept by its caller (`hold_lane`), never looked up by id
        self.expires_at = expires_at
        self.hold_expires_at = hold_expires_at
        self.holding = True  # its amounts still count in the counters (not settled, not expired)
        self.done = False  # every bucket settled or released (fields then empty)
        # bucket key -> what it holds there, in the order of the buckets, until settled or released.
        self.fields: dict[str, _Entry | None] = {}
        self.open = 0  # fields not settled yet


Held = _Record  # what `hold_lane` hands its caller


class MemoryStateStore:
    __slots__ = ("_counters", "_done", "_due", "_gc", "_grace", "_holding", "_layout", "_records", "_seq",
                 "_unordered", "done_ttl_s", "settle_grace_s")

    def __init__(
        self, *, settle_grace_s: float = DEFAULT_SETTLE_GRACE_S, done_ttl_s: float = MEMORY_DONE_TTL_S
    ) -> None:
        self.settle_grace_s = settle_grace_s
        self.done_ttl_s = done_ttl_s
        self._counters: dict[_CounterId, _Counter] = {}
        self._layout = 0  # changes whenever a counter is made or dropped: lanes then read theirs again
        self._records: dict[_RecordId, _Record] = {}
        # Counters by expiry: (expires at, sequence, ident).
        self._gc: list[tuple[float, int, _CounterId]] = []
        self._seq = 0
        # Records still holding -> when the hold expires, oldest first. Every hold gets the same ttl in
        # practice; one that expires before the last one (`_unordered`) makes expiry scan them all.
        self._holding: OrderedDict[_Record, float] = OrderedDict()
        self._unordered = False
        # Records kept after their hold for the idempotency window (done) or for a late settle
        # (grace): (drop at, ident), in order; a record whose expiry moved is checked when popped.
        self._done: deque[tuple[float, _RecordId]] = deque()
        self._grace: deque[tuple[float, _RecordId]] = deque()
        self._due = math.inf  # no queue needs attention before this

    def __repr__(self) -> str:
        return "MemoryStateStore()"

    # -- bookkeeping -------------------------------------------------------------------------

    def _collect(self, now: float) -> None:
        holding = self._holding
        if self._unordered:
            for rec in [r for r, exp in holding.items() if exp <= now]:
                self._expire_hold(rec, now)
            if not holding:
                self._unordered = False
        else:
            while holding:
                rec, expires_at = next(iter(holding.items()))
                if expires_at > now:
                    break
                self._expire_hold(rec, now)
        for queue in (self._done, self._grace):
            for _ in range(_GC_BATCH):
                if not queue or queue[0][0] > now:
                    break
                ident = queue.popleft()[1]
                r = self._records.get(ident)
                if r is not None and r.expires_at <= now:
                    del self._records[ident]
        gc = self._gc
        for _ in range(_GC_BATCH):
            if not gc or gc[0][0] > now:
                break
            counter_id = heapq.heappop(gc)[2]
            c = self._counters.get(counter_id)  # the entry may be stale: the counter was replaced
            if c is not None and c.expires_at <= now:
                del self._counters[counter_id]
                self._layout += 1
        if len(gc) > 2 * len(self._counters) + 1024:
            self._sweep(now)
        dead_due = min(self._done[0][0] if self._done else math.inf,
                       self._grace[0][0] if self._grace else math.inf,
                       gc[0][0] if gc else math.inf)
        if dead_due > now:  # nothing left over: the next pass may wait
            dead_due = max(dead_due, now + _GC_INTERVAL_S)
        hold_due = (min(holding.values()) if self._unordered else next(iter(holding.values()))) if holding else math.inf
        self._due = min(hold_due, dead_due)

    def _expire_hold(self, rec: _Record, now: float) -> None:
        """The hold was never settled: its amounts leave the counters; the record waits for a late settle."""
        del self._holding[rec]
        rec.holding = False
        for held in rec.fields.values():
            if held is not None and held[1]:
                c = held[2]
                if c is not None:  # a counter gone since holds nothing any more
                    c.used -= held[1]
        if rec.ident is not None:
            self._grace.append((rec.expires_at, rec.ident))
            self._due_by(rec.expires_at)

    def _sweep(self, now: float) -> None:
        """Drop expired counters and rebuild their heap from what lives: O(n), after >= n pushes."""
        self._counters = {k: c for k, c in self._counters.items() if c.expires_at > now}
        self._layout += 1
        self._seq = 0
        entries: list[tuple[float, int, _CounterId]] = []
        for ck, c in self._counters.items():
            self._seq += 1
            entries.append((c.expires_at, self._seq, ck))
        heapq.heapify(entries)
        self._gc = entries

    def _due_by(self, at: float) -> None:
        if at < self._due:
            self._due = at

    def _counter(self, ident: _CounterId, now: float) -> _Counter | None:
        c = self._counters.get(ident)
        return c if c is not None and c.expires_at > now else None

    def _new_counter(self, ident: _CounterId, expires_at: float, now: float) -> _Counter:
        c = _Counter(max(expires_at, now + MIN_KEY_TTL_S))
        self._counters[ident] = c
        self._layout += 1
        self._seq += 1
        heapq.heappush(self._gc, (c.expires_at, self._seq, ident))
        self._due_by(c.expires_at)
        return c

    def _used(self, ident: _CounterId, now: float) -> int:
        c = self._counters.get(ident)
        return c.used if c is not None and c.expires_at > now else 0

    def _record(self, ident: _RecordId, now: float) -> _Record | None:
        r = self._records.get(ident)
        if r is not None and r.expires_at <= now:
            self._forget(ident, r, now)
            return None
        return r

    def _forget(self, ident: _RecordId, rec: _Record, now: float) -> None:
        if rec.holding:  # given back now, out of turn
            self._expire_hold(rec, now)
        del self._records[ident]

    def stats(self) -> dict[str, int]:
        """Sizes of the internal tables, for tests and debugging."""
        return {
            "counters": len(self._counters),
            "holds": sum(sum(v is not None for v in r.fields.values()) for r in self._holding),
            "records": len(self._records),
            "gc_entries": len(self._gc) + len(self._holding) + len(self._done) + len(self._grace),
        }

    # -- the StateStore protocol -------------------------------------------------------------

    async def reserve(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> Decision:
        tag = buckets[0].hash_tag if type(buckets) is CheckedBuckets else check_buckets(buckets)
        check_reserve_args(reservation_id, ttl_s)
        if now is None:
            now = time.time()
        if now >= self._due:
            self._collect(now)
        if not buckets:
            return Decision(True, None, None, {}, {})
        ident = (tag, reservation_id)
        rec = self._record(ident, now)
        if rec is not None:
            if _already_held(rec, buckets, reservation_id, now):  # a retry of a live hold: nothing changes
                slots = slots_of(buckets, now)
                return decide(buckets, slots, self._counts(tag, buckets, slots, now), None, True)
            self._forget(ident, rec, now)  # its hold expired unsettled: the id may be used again
        decision, rec = self._take(tag, ident, buckets, ttl_s, now)
        if rec is not None:
            self._records[ident] = rec
        return decision

    def _take(self, tag: str, ident: _RecordId | None, buckets: Sequence[Bucket], ttl_s: float,
              now: float) -> tuple[Decision, _Record | None]:
        """Hold every amount if all fit (the record of the hold), else refuse (no record)."""
        # One pass: read, check and work out the headers' figures; a refusal is rare and takes the
        # general path (periods.decide) for its retry-after. The arithmetic is periods.fits and
        # periods.remaining, inlined: this runs for every counter of every request.
        counters = self._counters
        left: dict[str, int] = {}
        reset: dict[str, float] = {}
        found: list[tuple[Bucket, Span, _Counter | None]] = []
        for b in buckets:
            span = span_at(b.period, now)
            c = counters.get((tag, b.key, span.stamp))
            if c is not None and c.expires_at <= now:
                c = None
            cur = c.used + b.amount if c is not None else b.amount
            if b.kind == "window":
                p = counters.get((tag, b.key, span.prev_stamp))
                weighted = p.used * window_weight_ms(span, now) if p is not None and p.expires_at > now else 0
                free = (b.limit * WINDOW_MS - weighted - cur * WINDOW_MS) // WINDOW_MS
            else:
                free = b.limit - cur
            if free < 0:
                return self._refuse(tag, buckets, now), None
            left[b.name] = free
            reset[b.name] = span.end - now
            found.append((b, span, c))
        hold_exp = now + ttl_s
        rec = _Record(tag, ident, hold_exp + self.settle_grace_s, hold_exp)
        fields = rec.fields
        for b, span, c in found:
            if b.amount > 0:  # a zero hold changes no count; the record still says where to settle
                if c is None:
                    c = self._new_counter((tag, b.key, span.stamp), span.expires_at, now)
                c.used += b.amount
            fields[b.key] = (span.stamp, b.amount, c, b)
        self._start_hold(rec)
        return Decision(True, None, None, left, reset), rec

    def _start_hold(self, rec: _Record) -> None:
        """The record's amounts are in the counters: it holds until settled, or until its hold expires."""
        rec.open = len(rec.fields)
        hold_exp = rec.hold_expires_at
        holding = self._holding
        if holding and hold_exp < next(reversed(holding.values())):
            self._unordered = True
        holding[rec] = hold_exp
        self._due_by(hold_exp)

    def _counts(self, tag: str, buckets: Sequence[Bucket], slots: Sequence[Slot], now: float) -> list[tuple[int, int]]:
        return [(self._used((tag, b.key, s.stamp), now),
                 self._used((tag, b.key, s.prev_stamp), now) if b.kind == "window" else 0)
                for b, s in zip(buckets, slots, strict=True)]

    def _refuse(self, tag: str, buckets: Sequence[Bucket], now: float) -> Decision:
        slots = slots_of(buckets, now)
        counts = self._counts(tag, buckets, slots, now)
        failed = next(i for i, (b, s, (cur, prev)) in enumerate(zip(buckets, slots, counts, strict=True))
                      if not fits(b, cur, prev, s.rem_ms))
        return decide(buckets, slots, counts, failed, False)

    def _spend(self, tag: str, entry: _Entry, spent: int, holding: bool, now: float) -> None:
        """One bucket of a record settles at `spent`: the counter it held in moves by the difference."""
        stamp, reserved, c, b = entry
        was_held = reserved if holding else 0
        if spent == was_held:
            return
        if c is None or c.expires_at <= now:
            c = self._counter((tag, b.key, stamp), now)  # none was made for a zero hold; or it is gone
        if c is not None:
            c.used += spent - was_held
        elif spent:
            self._count_late(tag, b, stamp, spent, now)

    async def settle(
        self, reservation_id: str, buckets: Sequence[Bucket], actual: Mapping[str, int], now: float | None = None
    ) -> None:
        if type(buckets) is CheckedBuckets:
            tag = buckets[0].hash_tag
        else:
            tag = check_buckets(buckets)
        if not reservation_id:
            raise ValueError("reservation_id must be non-empty")
        check_actual(buckets, actual)
        if now is None:
            now = time.time()
        if now >= self._due:
            self._collect(now)
        if not buckets:
            return
        ident = (tag, reservation_id)
        rec = self._record(ident, now)
        if rec is not None and rec.done:
            return
        fields = rec.fields if rec is not None else {}
        holding = rec is not None and rec.holding
        for b in buckets:
            entry = fields.get(b.key, _MISSING)
            if entry is None:
                continue  # this bucket was settled or released before
            if entry is _MISSING:
                # Unknown here (never reserved, or its record is long gone): the usage is real,
                # so it counts now.
                self._count_now(tag, b, actual.get(b.name, b.amount), now)
                fields[b.key] = None
                continue
            self._spend(tag, entry, actual.get(b.name, entry[1]), holding, now)
            fields[b.key] = None
            if rec is not None:
                rec.open -= 1
        new = rec is None
        if rec is None:
            rec = self._records[ident] = _Record(tag, ident, now + self.done_ttl_s, 0.0)
            rec.holding = False
        elif rec.open:
            return  # some of the reservation's buckets are still held
        # Every bucket is done: remember only that, for the idempotency window.
        queued = not new  # a record whose hold expired already waits in the grace queue
        if rec.holding:
            rec.holding, queued = False, False
            del self._holding[rec]
        done_at = now + self.done_ttl_s
        if not queued or done_at < rec.expires_at:
            rec.expires_at = min(rec.expires_at, done_at)
            self._done.append((rec.expires_at, ident))
            self._due_by(rec.expires_at)
        rec.done = True
        rec.fields = {}

    def _count_now(self, tag: str, b: Bucket, spent: int, now: float) -> None:
        if spent:
            span = span_at(b.period, now)
            counter_id = (tag, b.key, span.stamp)
            c = self._counter(counter_id, now) or self._new_counter(counter_id, span.expires_at, now)
            c.used += spent

    def _count_late(self, tag: str, b: Bucket, stamp: str, spent: int, now: float) -> None:
        """Usage for a period whose counter is gone: it counts if that period is still read (the
        current one, or the minute/period just before it), else nothing reads it again."""
        span = span_at(b.period, now)
        expires_at = (span.expires_at if stamp == span.stamp
                      else span.prev_expires_at if stamp == span.prev_stamp else 0.0)
        if expires_at:
            self._new_counter((tag, b.key, stamp), expires_at, now).used += spent

    async def release(self, reservation_id: str, buckets: Sequence[Bucket], now: float | None = None) -> None:
        await self.settle(reservation_id, buckets, {b.name: 0 for b in buckets}, now)

    async def refresh(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> bool:
        tag = buckets[0].hash_tag if type(buckets) is CheckedBuckets else check_buckets(buckets)
        check_reserve_args(reservation_id, ttl_s)
        if now is None:
            now = time.time()
        if now >= self._due:
            self._collect(now)  # a hold past its ttl is given back first, as for a reserve
        if not buckets:
            return False
        rec = self._record((tag, reservation_id), now)
        return rec is not None and self._extend(rec, ttl_s, now)

    def _extend(self, rec: _Record, ttl_s: float, now: float) -> bool:
        """A record still holding now holds until ttl_s from now (or later, if it already did)."""
        if not rec.holding or rec.hold_expires_at <= now:
            return False
        hold_exp = now + ttl_s
        if hold_exp <= rec.hold_expires_at:
            return True
        holding = self._holding
        del holding[rec]
        # A refreshed hold goes last; with one ttl for every hold that keeps the queue in order.
        if holding and hold_exp < next(reversed(holding.values())):
            self._unordered = True
        holding[rec] = hold_exp
        rec.expires_at += hold_exp - rec.hold_expires_at  # the settle grace runs from the new expiry
        rec.hold_expires_at = hold_exp
        return True

    async def usage(self, buckets: Sequence[Bucket], now: float | None = None) -> dict[str, int]:
        tag = check_buckets(buckets)
        if now is None:
            now = time.time()
        if now >= self._due:
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
        self._layout += 1
        self._records.clear()
        self._gc.clear()
        self._holding.clear()
        self._done.clear()
        self._grace.clear()
        self._due = math.inf

    def seed(self, values: Sequence[SeedValue], now: float | None = None) -> None:
        """Each value's current day or month counter becomes the larger of what it counts and the
        value (what the ledger says was already spent): at start-up, so a restart forgets no spend."""
        if now is None:
            now = time.time()
        for tag, key, period, units in values:
            span = span_at(period, now)
            ident = (tag, key, span.stamp)
            c = self._counter(ident, now) or self._new_counter(ident, span.expires_at, now)
            if units > c.used:
                c.used = units

    # -- holds kept by their caller: the same counters, without reservation ids ----------------

    def hold_lane(self, lane: Lane, amounts: Sequence[int], ttl_s: float, now: float,
                  left: list[int]) -> Held | Decision:
        """Hold `amounts` (one per lane bucket, each within its bound) on the lane's buckets if all fit,
        as `reserve` would: the hold, for `settle_held` (and what each bucket has left after it, put in
        `left`); else the refusal's Decision, with nothing held. An unsettled hold expires after ttl_s.
        Synchronous: nothing here waits."""
        if now >= self._due:
            self._collect(now)
        if lane.owner is not self or lane.layout != self._layout or not lane.since <= now < lane.until:
            lane.read(self, now)
        # One pass to check (periods.fits and periods.remaining, inlined), one to count.
        for limit, ref, amount in zip(lane.limits, lane.refs, amounts, strict=True):
            c = ref[1]
            cur = c.used + amount if c is not None else amount
            p = ref[2]  # only a window has one
            if p is not None:  # weighted by periods.window_weight_ms, inlined
                rem_ms = WINDOW_MS - min(WINDOW_MS - 1, max(0, int((now - ref[0].begin) * 1000)))
                free = (limit * WINDOW_MS - p.used * rem_ms - cur * WINDOW_MS) // WINDOW_MS
            else:
                free = limit - cur
            if free < 0:
                del left[:]
                return self._refuse(lane.tag, [b._replace(amount=a) for b, a in zip(lane.buckets, amounts,
                                                                                    strict=True)], now)
            left.append(free)
        tag = lane.tag
        hold_exp = now + ttl_s
        rec = _Record(tag, None, hold_exp + self.settle_grace_s, hold_exp)
        fields = rec.fields
        for b, ref, amount in zip(lane.buckets, lane.refs, amounts, strict=True):
            span, c = ref[0], ref[1]
            if amount > 0:
                if c is None:
                    c = ref[1] = self._new_counter((tag, b.key, span.stamp), span.expires_at, now)
                c.used += amount
            fields[b.key] = (span.stamp, amount, c, b)
        self._start_hold(rec)
        return rec

    def refresh_held(self, held: Held, ttl_s: float, now: float) -> bool:
        """`refresh` for a lane's hold: it now expires ttl_s after `now` if it still holds (True);
        False, changing nothing, once it was settled or its ttl passed."""
        if now >= self._due:
            self._collect(now)
        return self._extend(held, ttl_s, now)

    def settle_held(self, held: Held, spent: Sequence[int], now: float | None = None) -> None:
        """The hold's buckets, in the order they were held, settle at `spent` (units, each within its
        bucket's bound); [0, ...] releases it. A second call does nothing. The same rules as `settle`
        for the same reservation by id: a hold past its ttl has given its amounts back and its usage
        counts where it was held; past the settle grace too, it counts now."""
        if held.done:
            return
        if now is None:
            now = time.time()
        tag = held.tag
        if held.holding and held.hold_expires_at <= now:
            self._expire_hold(held, now)  # as the collection before `settle` would have
        if held.expires_at <= now:
            for entry, units in zip(held.fields.values(), spent, strict=True):
                if entry is not None:
                    self._count_now(tag, entry[3], units, now)
        else:
            holding = held.holding
            for entry, units in zip(held.fields.values(), spent, strict=True):
                if entry is None:
                    continue
                c = entry[2]
                if holding and c is not None and c.expires_at > now:
                    c.used += units - entry[1]  # _spend's common case, inlined
                else:
                    self._spend(tag, entry, units, holding, now)
            if holding:
                held.holding = False
                del self._holding[held]
        held.done = True
        held.fields = {}


_MISSING = ("", -1, None, Bucket("", "", 0, "period", "day", 0, ""))


class Lane:
    """A group of buckets that is reserved together again and again (a limits plan's group), and
    what the store it is used with last read for them: per bucket the current period's span, its
    counter and, for a window, the previous minute's counter. The store reads them again when a
    period ends or any counter is made or dropped."""

    __slots__ = ("buckets", "ends", "layout", "limits", "owner", "refs", "since", "tag", "until")

    def __init__(self, buckets: CheckedBuckets) -> None:
        if not buckets:
            raise ValueError("a lane needs buckets")
        self.buckets = buckets  # what each counter is (the amounts are the reservation's)
        self.limits = [b.limit for b in buckets]
        self.tag = buckets[0].hash_tag
        self.owner: MemoryStateStore | None = None
        self.layout = -1
        self.since, self.until = math.inf, -math.inf  # while all its spans are current
        self.refs: list[list[Any]] = []  # per bucket: [span, counter or None, previous counter or None]
        self.ends: list[float] = []  # per bucket: when its period (minute, day, month) ends

    def read(self, store: MemoryStateStore, now: float) -> None:
        refs, ends, begins = [], [], []
        for b in self.buckets:
            span = span_at(b.period, now)
            begins.append(span.begin)
            refs.append([span, store._counter((self.tag, b.key, span.stamp), now),
                         store._counter((self.tag, b.key, span.prev_stamp), now) if b.kind == "window" else None])
            ends.append(span.end)
        self.refs, self.ends = refs, ends
        self.since, self.until = max(begins), min(ends)
        self.owner, self.layout = store, store._layout


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
