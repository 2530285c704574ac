"""The arithmetic every state back end shares: counter names, expiry, fit, and what the client is told.

Everything derives from the caller's `now` (seconds since the epoch), never from a server clock,
so tests can move time and the memory and Redis stores agree to the unit. A back end only stores
counters and holds; it asks this module which counter a bucket uses (`slot`), whether a request
fits (`fits`, mirrored line for line by the Redis script) and turns the counts into a Decision.

Sliding windows use the two-fixed-window approximation: the previous minute weighted by the share
of the current minute not yet elapsed, plus the current minute. The weight is a whole number of
milliseconds out of 60_000, so `prev * rem_ms + cur * 60_000 <= limit * 60_000` is exact in
Python ints and in Lua doubles alike (within MAX_WINDOW_UNITS).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from functools import lru_cache
from typing import NamedTuple

from gateway.store.state.base import Bucket, Decision

WINDOW_MS = 60_000
# A minute's counter is "current" for one minute and "previous" for the next; the slack covers
# clock skew between gateway processes.
KEY_SLACK_S = 10.0
# Period counters outlive their period by this much, for settlements of holds made just before
# the rollover. Nothing reads an old period after that.
PERIOD_KEEP_S = 3600.0
# A late settle (after its hold expired) still finds the reservation's record this long after
# the expiry, and with it the period the hold was made in.
DEFAULT_SETTLE_GRACE_S = 3600.0
# A settled or released id is remembered this long, so a repeated settle or release is a no-op.
# A retried settle comes within seconds; the window is short because every request leaves one
# marker: at 1,500 requests/s a 300 s window held 450,000 of them.
DEFAULT_DONE_TTL_S = 60.0
# In one process a settle is never retried (the caller settles a hold once): the memory store's
# window only has to cover a duplicate from the caller itself, and each marker costs RSS (a 10 s
# window held ~9 MB at 1,600 req/s).
MEMORY_DONE_TTL_S = 1.0
# A key's TTL is never set below this: PEXPIRE with 0 would delete the key.
MIN_KEY_TTL_S = 1.0
# retry-after is never below this: "now" is never an honest answer for a full window.
MIN_RETRY_AFTER_S = 0.1

_EPOCH = date(1970, 1, 1)
_DAY_S = 86_400


class Slot(NamedTuple):
    """Where one bucket counts at one instant (a tuple: several are made per request)."""

    stamp: str  # suffix of the current counter: "20261130" (day), "202611" (month), minutes since epoch (window)
    prev_stamp: str  # the counter before it (a window reads it; a late settle may land in it)
    reset_s: float  # until the current minute/day/month ends
    expires_at: float  # when the current counter may be dropped (same clock as now)
    prev_expires_at: float
    rem_ms: int  # window: ms of the current minute not yet elapsed, the previous minute's weight; period: 0


@lru_cache(maxsize=16)
def _minute(m: int) -> tuple[str, str]:
    return str(m), str(m - 1)


@lru_cache(maxsize=16)
def _day(d: int) -> tuple[str, str]:
    today = _EPOCH + timedelta(days=d)
    return f"{today:%Y%m%d}", f"{today - timedelta(days=1):%Y%m%d}"


@lru_cache(maxsize=16)
def _month(d: int) -> tuple[str, str, float, float]:
    start = (_EPOCH + timedelta(days=d)).replace(day=1)
    nxt = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    prev = (start - timedelta(days=1)).replace(day=1)
    return f"{start:%Y%m}", f"{prev:%Y%m}", float((start - _EPOCH).days * _DAY_S), float((nxt - _EPOCH).days * _DAY_S)


def slot(b: Bucket, now: float) -> Slot:
    return _slot(b.kind, b.period, now)


def slots_of(buckets: Sequence[Bucket], now: float) -> list[Slot]:
    """`slot` of every bucket; buckets of one period share theirs (a call has several per period)."""
    seen: dict[str, Slot] = {}
    out: list[Slot] = []
    for b in buckets:
        s = seen.get(b.period)
        if s is None:
            s = seen[b.period] = _slot(b.kind, b.period, now)
        out.append(s)
    return out


class Span(NamedTuple):
    """The minute, day or month `now` falls in: everything of a Slot that does not move with `now`."""

    begin: float
    end: float
    stamp: str
    prev_stamp: str
    expires_at: float
    prev_expires_at: float


# period -> the span last asked for: a memo of the pure `_span_of`, so the calendar arithmetic runs
# once a minute (day, month) instead of on every request.
_last_span: dict[str, Span] = {}


def span_at(period: str, now: float) -> Span:
    span = _last_span.get(period)
    if span is None or not span.begin <= now < span.end:
        span = _last_span[period] = _span_of(period, now)
    return span


def _span_of(period: str, now: float) -> Span:
    if period == "minute":
        minute = int(now // 60)
        start = float(minute * 60)
        stamp, prev = _minute(minute)
        return Span(start, start + 60, stamp, prev, start + 120 + KEY_SLACK_S, start + 60 + KEY_SLACK_S)
    # POSIX time has no leap seconds: UTC days are exactly 86,400 s.
    d = int(now // _DAY_S)
    if period == "day":
        stamp, prev = _day(d)
        begin, end = float(d * _DAY_S), float((d + 1) * _DAY_S)
    else:
        stamp, prev, begin, end = _month(d)
    return Span(begin, end, stamp, prev, end + PERIOD_KEEP_S, begin + PERIOD_KEEP_S)


def _slot(kind: str, period: str, now: float) -> Slot:
    span = span_at(period, now)
    if kind == "window":
        return Slot(span.stamp, span.prev_stamp, span.end - now, span.expires_at, span.prev_expires_at,
                    window_weight_ms(span, now))
    return Slot(span.stamp, span.prev_stamp, span.end - now, span.expires_at, span.prev_expires_at, 0)


def window_weight_ms(span: Span, now: float) -> int:
    """The previous minute's weight: ms of the current minute not yet elapsed (1..60_000)."""
    return WINDOW_MS - min(WINDOW_MS - 1, max(0, int((now - span.begin) * 1000)))


def key_ttl_ms(expires_at: float, now: float) -> int:
    return max(int(MIN_KEY_TTL_S * 1000), int((expires_at - now) * 1000) + 1)


def fits(b: Bucket, cur: int, prev: int, rem_ms: int) -> bool:
    if b.kind == "period":
        return cur + b.amount <= b.limit
    return prev * rem_ms + (cur + b.amount) * WINDOW_MS <= b.limit * WINDOW_MS


def used(b: Bucket, cur: int, prev: int, rem_ms: int) -> int:
    """Units counted against the bucket now; a window's weighted estimate is rounded up."""
    if b.kind == "period":
        return cur
    return -(-(prev * rem_ms + cur * WINDOW_MS) // WINDOW_MS)


def remaining(b: Bucket, cur: int, prev: int, rem_ms: int, extra: int) -> int:
    """Whole units still free after `extra` more are counted."""
    if b.kind == "period":
        return max(0, b.limit - cur - extra)
    return max(0, (b.limit * WINDOW_MS - prev * rem_ms - (cur + extra) * WINDOW_MS) // WINDOW_MS)


def retry_after(b: Bucket, cur: int, prev: int, s: Slot) -> float | None:
    """Seconds until `b.amount` fits if nothing else is counted meanwhile; None if it never can."""
    if b.amount > b.limit:
        return None
    if b.kind == "period":
        return max(MIN_RETRY_AFTER_S, s.reset_s)
    if cur + b.amount <= b.limit:
        if prev <= 0:
            return MIN_RETRY_AFTER_S  # it fits already; only a hold expiring in between makes this reachable
        # The previous minute's weight falls as this one passes: room once rem_ms <= ok_ms.
        ok_ms = (b.limit - cur - b.amount) * WINDOW_MS // prev
        return max(MIN_RETRY_AFTER_S, s.reset_s - ok_ms / 1000)
    # Not within this minute: in the next one, this minute's count is the weighted previous one.
    ok_ms = (b.limit - b.amount) * WINDOW_MS // cur
    return max(MIN_RETRY_AFTER_S, s.reset_s + (WINDOW_MS - ok_ms) / 1000)


def decide(
    buckets: Sequence[Bucket], slots: Sequence[Slot], counts: Sequence[tuple[int, int]], failed: int | None, held: bool
) -> Decision:
    """The Decision for counts (current, previous) read before this reservation was applied.

    `held`: the reservation was already holding (a repeated reserve), so its amounts are in the counts."""
    add = failed is None and not held
    left: dict[str, int] = {}
    reset: dict[str, float] = {}
    for b, s, (cur, prev) in zip(buckets, slots, counts, strict=True):
        left[b.name] = remaining(b, cur, prev, s.rem_ms, b.amount if add else 0)
        reset[b.name] = s.reset_s
    if failed is None:
        return Decision(True, None, None, left, reset)
    b = buckets[failed]
    cur, prev = counts[failed]
    return Decision(False, b, retry_after(b, cur, prev, slots[failed]), left, reset)
