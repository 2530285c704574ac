"""The state plane's contract for budgets and rate limits: buckets, decisions and the store protocol.

A request draws on several counters at once (a tenant's day and month token and dollar budgets,
its requests and tokens per minute). `StateStore.reserve` checks and holds all of them in one
atomic step, `settle` replaces the hold with what was really used, `release` gives it back. A hold
expires `ttl_s` after it was made unless its caller `refresh`es it: a call that is still running
(a long stream) keeps its hold by refreshing it well before then, and a hold left by a crashed
process, which nothing refreshes, still expires. The
memory and Redis back ends implement the same semantics; the time arithmetic they share lives in
`periods`, so neither can drift from the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Period buckets are compared exactly in Redis (as decimal strings) and counted with INCRBY, so
# int64 is the bound; 2**62 leaves room for settlements above the limit (4.6e18 pico-dollars is
# USD 4.6M). Window buckets are weighted in Lua doubles: prev * 60_000 + cur * 60_000 must stay
# below 2**53 to be exact, hence 2**36 (69 billion tokens a minute).
MAX_PERIOD_UNITS = 2**62
MAX_WINDOW_UNITS = 2**36
# Record fields for metadata start with "~", so bucket keys must not.
_RESERVED_KEY_START = "~"


# Buckets and decisions are made on every request; tuples cost a third of a frozen dataclass.
class Bucket(NamedTuple):
    key: str  # the counter's identity without prefix or period, e.g. "tenant:acme:tokens:day"
    hash_tag: str  # shared by all buckets of one call: Redis keys become "gw:{<hash_tag>}:..." (one cluster slot)
    limit: int  # units allowed per period/window
    kind: Literal["period", "window"]  # calendar budget (UTC day or month) | sliding 60 s rate limit
    period: Literal["day", "month", "minute"]
    amount: int  # units this request reserves (>= 0)
    name: str  # for errors and headers: "tokens_per_day", "usd_per_month", "requests_per_minute", ...


class CheckedBuckets(tuple[Bucket, ...]):
    """Buckets whose fields were validated when their caller was built (`check_buckets` on every
    counter of a limits plan, amounts clamped to their bound since): a store need not check them
    again on every request. Nothing else should make one."""

    __slots__ = ()


class Decision(NamedTuple):
    ok: bool
    failed: Bucket | None  # the first bucket that did not fit
    # When the failed bucket will have room; None when it never will (amount > limit) or when ok.
    retry_after_s: float | None
    remaining: dict[str, int]  # bucket.name -> units left after this reservation (before it, when refused)
    reset_s: dict[str, float]  # bucket.name -> seconds until its current minute/day/month ends


class StateUnavailable(Exception):
    """The state back end could not be reached or failed the operation (refused, timed out, broken)."""


class StateStore(Protocol):
    async def reserve(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> Decision:
        """One atomic step over all buckets (one hash_tag, else ValueError): purge expired holds,
        then hold every amount (expiring after ttl_s) if all fit, else change nothing.

        Repeating a reserve whose hold is still live returns ok without holding twice (so a
        retried call is safe); reusing a settled or released id raises ValueError."""
        ...

    async def settle(
        self, reservation_id: str, buckets: Sequence[Bucket], actual: Mapping[str, int], now: float | None = None
    ) -> None:
        """Replace the hold with actual usage (name -> units; a missing name keeps the reserved amount)
        in the period/window it was reserved in. Idempotent; an expired hold still records the usage."""
        ...

    async def release(self, reservation_id: str, buckets: Sequence[Bucket], now: float | None = None) -> None:
        """Nothing was used: drop the hold. Idempotent, and a no-op after settle."""
        ...

    async def refresh(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> bool:
        """A live hold now expires ttl_s after `now` (never sooner than it would have): True. False,
        changing nothing, when the id holds nothing any more (settled, released, expired or unknown):
        an expired hold is not taken again, its usage still counts when it settles."""
        ...

    async def usage(self, buckets: Sequence[Bucket], now: float | None = None) -> dict[str, int]:
        """name -> settled + held units now (a window's weighted estimate, rounded up)."""
        ...

    async def ping(self) -> bool:
        """True when the back end answers; never raises."""
        ...

    async def aclose(self) -> None: ...


_BOUNDS = {("period", "day"): MAX_PERIOD_UNITS, ("period", "month"): MAX_PERIOD_UNITS,
           ("window", "minute"): MAX_WINDOW_UNITS}


def check_buckets(buckets: Sequence[Bucket]) -> str:
    """Validate one call's buckets and return their shared hash tag ("" for none).

    Both back ends run this before touching anything, so bad input fails the same way on both.
    It runs on every request: the common case is one pass of cheap tests; `_bucket_error` works
    out which rule a bad bucket broke."""
    if not buckets:
        return ""
    tag = buckets[0].hash_tag
    if not tag or "{" in tag or "}" in tag:
        # An empty or braced tag would let Redis Cluster hash each key on its own: keys in many slots.
        raise ValueError(f"bucket {buckets[0].name!r}: hash_tag must be non-empty and without braces, got {tag!r}")
    for b in buckets:
        bound = _BOUNDS.get((b.kind, b.period))
        # bool is an int; a True limit is a bug, not a limit of one.
        if (bound is None or b.hash_tag != tag or not b.key or b.key[0] == _RESERVED_KEY_START
                or type(b.limit) is not int or type(b.amount) is not int
                or not 0 <= b.limit <= bound or not 0 <= b.amount <= bound):
            raise _bucket_error(b, tag)
    n = len(buckets)
    if n > 1 and (len({b.name for b in buckets}) != n or len({b.key for b in buckets}) != n):
        seen: set[str] = set()
        for b in buckets:
            if b.name in seen or b.key in seen:
                raise ValueError(f"bucket {b.name!r}: names and keys must be unique within one call")
            seen.update((b.name, b.key))
        raise ValueError("bucket names and keys must be unique within one call")
    return tag


def _bucket_error(b: Bucket, tag: str) -> ValueError:
    if b.hash_tag != tag:
        return ValueError(f"buckets of one call must share a hash_tag: {tag!r} and {b.hash_tag!r} ({b.name!r})")
    if not b.key or b.key.startswith(_RESERVED_KEY_START):
        return ValueError(f"bucket {b.name!r}: key must be non-empty and not start with '~', got {b.key!r}")
    if b.kind == "period":
        if b.period not in ("day", "month"):
            return ValueError(f"bucket {b.name!r}: a period bucket counts per 'day' or 'month', not {b.period!r}")
        bound = MAX_PERIOD_UNITS
    elif b.kind == "window":
        if b.period != "minute":
            return ValueError(f"bucket {b.name!r}: a window bucket counts per 'minute', not {b.period!r}")
        bound = MAX_WINDOW_UNITS
    else:
        return ValueError(f"bucket {b.name!r}: kind must be 'period' or 'window', not {b.kind!r}")
    if type(b.limit) is not int or not 0 <= b.limit <= bound:
        return ValueError(f"bucket {b.name!r}: limit must be an int in [0, {bound}], got {b.limit!r}")
    return ValueError(f"bucket {b.name!r}: amount must be an int in [0, {bound}], got {b.amount!r}")


def check_settle_args(reservation_id: str, buckets: Sequence[Bucket], actual: Mapping[str, int]) -> str:
    """Validate a settlement (both back ends, before any I/O); returns the buckets' hash tag."""
    tag = check_buckets(buckets)
    check_actual(buckets, actual)
    if not reservation_id:
        raise ValueError("reservation_id must be non-empty")
    return tag


def check_actual(buckets: Sequence[Bucket], actual: Mapping[str, int]) -> None:
    for b in buckets:
        v = actual.get(b.name)
        if v is None:
            continue
        bound = MAX_PERIOD_UNITS if b.kind == "period" else MAX_WINDOW_UNITS
        if type(v) is not int or not 0 <= v <= bound:
            raise ValueError(f"actual[{b.name!r}] must be an int in [0, {bound}], got {v!r}")


def check_reserve_args(reservation_id: str, ttl_s: float) -> None:
    if not reservation_id:
        raise ValueError("reservation_id must be non-empty")
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a finite number > 0, got {ttl_s!r}")


def state_store_from_url(url: str) -> StateStore:
    """ "memory" -> the in-process store; "redis://..." / "rediss://..." -> the shared Redis store.

    A `key_prefix` query parameter (default "gw:") lets several deployments or test runs share one
    Redis without sharing counters: redis://host:6379/0?key_prefix=staging:"""
    if url in ("memory", "memory://"):
        from gateway.store.state.memory import MemoryStateStore

        return MemoryStateStore()
    if url.startswith(("redis://", "rediss://")):
        from gateway.store.state.redis import RedisStateStore

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [v for k, v in query if k == "key_prefix"]
        if not prefixes:
            return RedisStateStore(url)
        rest = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "key_prefix"])))
        return RedisStateStore(rest, prefix=prefixes[-1])
    raise ValueError(f"unsupported state URL {url.split('://')[0]!r} (use 'memory' or redis://)")


class SeedValue(NamedTuple):
    """What the ledger says a period counter already spent (see gateway.limits.seed)."""

    hash_tag: str
    key: str  # the bucket's key, e.g. "tenant:acme:tokens_per_day"
    period: Literal["day", "month"]
    units: int  # in [0, MAX_PERIOD_UNITS]
