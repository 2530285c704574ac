"""The shared state store: budgets and rate limits in Redis, one Lua script (one round trip) per call.

Several gateway processes on one Redis behave as one because every reserve, settle and usage is a
single script, and Redis runs scripts one at a time. Keys of one call share the bucket's hash tag,
so in Redis Cluster they live in one slot. Layout, with prefix P (default "gw:") and tag T:

    P{T}:c:<bucket key>:<stamp>    string: units used (settled + held), an INCRBY counter
    P{T}:c:<bucket key>:<stamp>:z  sorted set of holds "<rid>|<amount>", scored by when each expires
    P{T}:r:<rid>                   hash: <bucket key> = "<stamp>|<amount>" while held, "-" once settled;
                                   "~exp" (record expiry), "~hold" (hold expiry); when every bucket is
                                   done it shrinks to {"~done": 1, "~exp"} for the idempotency window

A live call refreshes its hold (`refresh`): the record's "~hold" and each held member's score move
to the new expiry, so a purge does not take it while the call runs.

With a seeder (gateway.limits.seed), a period counter's holds set also carries the member
"~seeded" (score +inf, so no purge takes it) once the counter was seeded from the ledger; a reserve
that finds a current period counter without it (a new period, or a Redis that lost its data)
changes nothing and asks the client to seed it first (see `_SEED`).

<stamp> is the UTC day (20261130), month (202611) or minute since the epoch (29178420); periods.py
names it from the caller's clock, as it does for every expiry, so the scripts never read Redis's
TIME and behave exactly as the memory store does. Counters get PEXPIRE a little after their
period (two minutes for a window), records ttl + the settle grace.

A settle has to find the counter its hold was made in, which the record names; since a script may
only touch keys it was given, each call passes the current and the previous counter of every bucket
and the script picks one (a hold older than that sits in a counter nothing reads any more).

Unit arithmetic is exact: period budgets (pico-dollars run past 2**53) are only added with INCRBY
and compared as decimal strings; window arithmetic stays below 2**53 (see MAX_WINDOW_UNITS).

Per call the client sends the keys plus one packed "a|b|c" argument per bucket: redis-py spends
more time encoding arguments than the script spends splitting them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.store.state.base import (
    MAX_PERIOD_UNITS,
    Bucket,
    Decision,
    StateUnavailable,
    check_buckets,
    check_reserve_args,
    check_settle_args,
)
from gateway.store.state.periods import (
    DEFAULT_DONE_TTL_S,
    DEFAULT_SETTLE_GRACE_S,
    Slot,
    decide,
    key_ttl_ms,
    slots_of,
    used,
)

log = logging.getLogger("gateway.store.state")

# Small timeouts: a dead Redis must fail a request within about two seconds (then the limits
# stage's fail-open/closed policy decides), not hang it; but a burst that opens many connections
# on a busy machine must not be mistaken for a dead Redis (0.5 s was, in the suite).
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 1.0
# Waiting for a free pooled connection; the pool bounds the connections one process opens.
POOL_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 64
HEALTH_CHECK_INTERVAL_S = 30

_PRELUDE = r"""
local W = 60000

-- Drop the expired holds of one counter (members "<rid>|<amount>") and take them off its count.
local function purge(c, z, now)
  while true do
    local ids = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', '0', '128')
    if #ids == 0 then return end
    for i = 1, #ids do
      redis.call('INCRBY', c, '-' .. string.match(ids[i], '|(%d+)$'))
    end
    redis.call('ZREM', z, unpack(ids))
    if #ids < 128 then return end
  end
end

local function count(c)
  return redis.call('GET', c) or '0'
end

-- a <= b for integers as Redis prints them (a >= 0). Doubles are exact below 2^53; beyond, compare
-- the digits (bytes, not strcoll).
local function le(a, b)
  if #a < 16 and #b < 16 then return tonumber(a) <= tonumber(b) end
  if #a ~= #b then return #a < #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return true
end
"""

# KEYS: the record, then per bucket: current count, current holds, and for a window only, previous
#   count and previous holds (a period's previous counter plays no part in a check; leaving its
#   keys out saves redis-py more time encoding arguments than anything else in a reserve).
# ARGV: rid, now, hold expiry, record expiry, record ttl ms; then one string per bucket (one argument
#   instead of eight: redis-py spends more encoding arguments than Lua spends splitting them):
#   "kind|limit|amount|headroom|rem_ms|key ttl ms|stamp|record field" with kind 'p' or 'w' and
#   headroom = limit - amount (or -1); kind 's' is a period bucket whose counter must have been seeded.
# Returns {status, failed bucket (1-based) or 0, cur1, prev1, cur2, prev2, ...} with status 1 (checked,
# and held unless failed), 2 (this id already holds these buckets: nothing changed), -1 (id already
# settled), -2 (id holds other buckets); or {3, 0, i, j, ...}: buckets i, j (1-based) are not seeded,
# nothing changed.
_RESERVE = (
    _PRELUDE
    + r"""
local rid, now = ARGV[1], ARGV[2]
local nowf = tonumber(now)
local rec = KEYS[1]
local n = #ARGV - 5
local B = {}
local unseeded = nil
local at = 1
for i = 1, n do
  local kind, limit, amount, headroom, rem, ttl, stamp, field =
    string.match(ARGV[5 + i], '^(%a)|(%d+)|(%d+)|(%-?%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
  B[i] = {window = kind == 'w', limit = limit, amount = amount, headroom = headroom, rem = rem, ttl = ttl,
          stamp = stamp, field = field, k = at}
  if kind == 's' and (not redis.call('ZSCORE', KEYS[at + 2], '~seeded') or redis.call('EXISTS', KEYS[at + 1]) == 0) then
    unseeded = unseeded or {3, 0}
    unseeded[#unseeded + 1] = i
  end
  at = at + ((kind == 'w') and 4 or 2)
end
if unseeded then return unseeded end

local held = false
local r = redis.call('HGETALL', rec)
if #r > 0 then
  local f = {}
  for i = 1, #r, 2 do f[r[i]] = r[i + 1] end
  if tonumber(f['~exp'] or '0') > nowf then
    if f['~done'] then return {-1} end
    for _, v in pairs(f) do
      if v == '-' then return {-1} end
    end
    if tonumber(f['~hold'] or '0') > nowf then
      for i = 1, n do
        if not f[B[i].field] then return {-2} end
      end
      held = true
    end
  end
  if not held then redis.call('DEL', rec) end
end

local out = {held and 2 or 1, 0}
local failed = 0
for i = 1, n do
  local b = B[i]
  local k = b.k
  purge(KEYS[k + 1], KEYS[k + 2], now)
  local cur, prev = count(KEYS[k + 1]), '0'
  if b.window then
    purge(KEYS[k + 3], KEYS[k + 4], now)
    prev = count(KEYS[k + 3])
  end
  out[#out + 1] = cur
  out[#out + 1] = prev
  if failed == 0 and not held then
    local ok
    if b.window then
      ok = tonumber(prev) * tonumber(b.rem) + (tonumber(cur) + tonumber(b.amount)) * W <= tonumber(b.limit) * W
    else
      ok = string.sub(b.headroom, 1, 1) ~= '-' and le(cur, b.headroom)
    end
    if not ok then failed = i end
  end
end
out[2] = failed
if failed > 0 or held then return out end

local fields = {'~exp', ARGV[4], '~hold', ARGV[3]}
for i = 1, n do
  local b = B[i]
  local k = b.k
  if b.amount ~= '0' then
    local c, z = KEYS[k + 1], KEYS[k + 2]
    -- A new counter (the count equals this amount) gets its TTL; an existing one has it already.
    if redis.call('INCRBY', c, b.amount) == tonumber(b.amount) then redis.call('PEXPIRE', c, b.ttl) end
    -- The holds set disappears whenever it empties, so it is (re)given its TTL every time.
    redis.call('ZADD', z, ARGV[3], rid .. '|' .. b.amount)
    redis.call('PEXPIRE', z, b.ttl)
  end
  fields[#fields + 1] = b.field
  fields[#fields + 1] = b.stamp .. '|' .. b.amount
end
redis.call('HSET', rec, unpack(fields))
redis.call('PEXPIRE', rec, ARGV[5])
return out
"""
)

# KEYS: as for reserve. ARGV: rid, now, done expiry, done ttl ms; then one string per bucket:
#   "current stamp|previous stamp|actual|amount|current ttl ms|previous ttl ms|record field", where
#   actual '' means the reserved amount and amount counts if it was never reserved.
# Release is a settle with every actual 0.
_SETTLE = r"""
local rid, nowf = ARGV[1], tonumber(ARGV[2])
local rec = KEYS[1]
local n = #ARGV - 4
local f = {}
local live = false
local r = redis.call('HGETALL', rec)
if #r > 0 then
  for i = 1, #r, 2 do f[r[i]] = r[i + 1] end
  if tonumber(f['~exp'] or '0') > nowf then
    if f['~done'] then return 0 end
    live = true
  else
    redis.call('DEL', rec)
    f = {}
  end
end

local marks = {}
for i = 1, n do
  local k = 1 + 4 * (i - 1)
  local stamp_cur, stamp_prev, spent, amount, ttl_cur, ttl_prev, field =
    string.match(ARGV[4 + i], '^([^|]*)|([^|]*)|(%d*)|(%d+)|(%d+)|(%d+)|(.*)$')
  local v = f[field]
  if v ~= '-' then
    local c, z, ttl, reserved
    if v then
      local bar = string.find(v, '|', 1, true)
      local stamp = string.sub(v, 1, bar - 1)
      reserved = string.sub(v, bar + 1)
      if stamp == stamp_cur then
        c, z, ttl = KEYS[k + 1], KEYS[k + 2], ttl_cur
      elseif stamp == stamp_prev then
        c, z, ttl = KEYS[k + 3], KEYS[k + 4], ttl_prev
      end
    else
      -- Unknown here (never reserved, or the record is long gone): the usage is real, count it now.
      reserved = amount
      c, z, ttl = KEYS[k + 1], KEYS[k + 2], ttl_cur
    end
    if spent == '' then spent = reserved end
    if c then
      -- Not there when the hold expired and was purged: its amount was taken off then.
      if v and redis.call('ZREM', z, rid .. '|' .. reserved) == 1 then
        if #spent < 16 and #reserved < 16 then
          local d = tonumber(spent) - tonumber(reserved)
          if d ~= 0 then redis.call('INCRBY', c, string.format('%d', d)) end
        else
          redis.call('INCRBY', c, '-' .. reserved)
          if spent ~= '0' then redis.call('INCRBY', c, spent) end
        end
      elseif spent ~= '0' then
        if redis.call('INCRBY', c, spent) == tonumber(spent) then redis.call('PEXPIRE', c, ttl) end
      end
    end
    f[field] = '-'
    marks[#marks + 1] = field
    marks[#marks + 1] = '-'
  end
end

for k, v in pairs(f) do
  if string.sub(k, 1, 1) ~= '~' and v ~= '-' then
    -- Other buckets of this reservation are still held.
    if #marks > 0 then redis.call('HSET', rec, unpack(marks)) end
    return 0
  end
end
-- Every bucket is done: keep a small marker so a repeated settle or release does nothing.
local exp, ttl = ARGV[3], ARGV[4]
if live and tonumber(f['~exp']) < tonumber(exp) then
  exp = f['~exp']
  ttl = math.max(1, math.ceil((tonumber(exp) - nowf) * 1000))
end
redis.call('DEL', rec)
redis.call('HSET', rec, '~done', '1', '~exp', exp)
redis.call('PEXPIRE', rec, ttl)
return 0
"""

# KEYS: as for settle. ARGV: rid, now, hold expiry, record expiry, record ttl ms; then one string per
#   bucket: "current stamp|previous stamp|record field". Returns 1 when the hold was live and now
#   expires at the new time (each held member rescored, so no purge takes it), else 0 (nothing changed).
_REFRESH = r"""
local rid, nowf = ARGV[1], tonumber(ARGV[2])
local rec = KEYS[1]
local r = redis.call('HGETALL', rec)
if #r == 0 then return 0 end
local f = {}
for i = 1, #r, 2 do f[r[i]] = r[i + 1] end
if f['~done'] or tonumber(f['~hold'] or '0') <= nowf then return 0 end
-- Never sooner than it would have expired: only a later expiry changes anything.
local later = tonumber(f['~hold']) < tonumber(ARGV[3])
local live = false
for i = 1, #ARGV - 5 do
  local k = 1 + 4 * (i - 1)
  local stamp_cur, stamp_prev, field = string.match(ARGV[5 + i], '^([^|]*)|([^|]*)|(.*)$')
  local v = f[field]
  if v and v ~= '-' then
    live = true
    local bar = string.find(v, '|', 1, true)
    local stamp, amount = string.sub(v, 1, bar - 1), string.sub(v, bar + 1)
    local z
    if stamp == stamp_cur then z = KEYS[k + 2] elseif stamp == stamp_prev then z = KEYS[k + 4] end
    -- XX: a member a purge took (its counter expired with its minute) is not put back.
    if later and z and amount ~= '0' then redis.call('ZADD', z, 'XX', ARGV[3], rid .. '|' .. amount) end
  end
end
if not live then return 0 end
if later then
  redis.call('HSET', rec, '~hold', ARGV[3], '~exp', ARGV[4])
  redis.call('PEXPIRE', rec, ARGV[5])
end
return 1
"""

# KEYS: per counter its count and its holds. ARGV: per counter "units|ttl ms".
# A counter not seeded yet (no "~seeded" holds member, or no count) becomes the larger of its count and
# the units, and is marked; one already seeded (by another replica, a moment before) is left alone.
# The larger, not the sum: settlements of calls made before Redis lost its data may have counted
# already, and the ledger may count them too.
_SEED = (
    _PRELUDE
    + r"""
local seeded = 0
for i = 1, #KEYS / 2 do
  local c, z = KEYS[2 * i - 1], KEYS[2 * i]
  local units, ttl = string.match(ARGV[i], '^(%d+)|(%d+)$')
  if not redis.call('ZSCORE', z, '~seeded') or redis.call('EXISTS', c) == 0 then
    local cur = count(c)
    if le(units, cur) then units = cur end
    redis.call('SET', c, units, 'PX', ttl)
    redis.call('ZADD', z, '+inf', '~seeded')
    redis.call('PEXPIRE', z, ttl)
    seeded = seeded + 1
  end
end
return seeded
"""
)

# KEYS: per bucket current count, current holds, previous count, previous holds. ARGV: now, then
# per bucket its kind. Returns {cur1, prev1, cur2, prev2, ...}.
_USAGE = (
    _PRELUDE
    + r"""
local out = {}
for i = 1, #KEYS / 4 do
  local k = 4 * (i - 1)
  purge(KEYS[k + 1], KEYS[k + 2], ARGV[1])
  out[#out + 1] = count(KEYS[k + 1])
  if ARGV[i + 1] == 'w' then
    purge(KEYS[k + 3], KEYS[k + 4], ARGV[1])
    out[#out + 1] = count(KEYS[k + 3])
  else
    out[#out + 1] = '0'
  end
end
return out
"""
)


def _describe(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


# (hash tag, the unseeded buckets, now) -> what each already spent this period, from the ledger.
Seeder = Callable[[str, Sequence[Bucket], float], Awaitable[list[int]]]
# A reserve that still finds unseeded counters after this many seedings gives up (StateUnavailable).
_SEED_ROUNDS = 3


class RedisStateStore:
    __slots__ = ("_client", "_refresh", "_reserve", "_seed", "_settle", "_usage", "done_ttl_s", "prefix", "seeder",
                 "settle_grace_s")

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw:",
        max_connections: int = MAX_CONNECTIONS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        timeout_s: float = READ_TIMEOUT_S,
        pool_timeout_s: float = POOL_TIMEOUT_S,
        settle_grace_s: float = DEFAULT_SETTLE_GRACE_S,
        done_ttl_s: float = DEFAULT_DONE_TTL_S,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces: the hash tag has to be the key's first {...}")
        self.prefix = prefix
        self.settle_grace_s = settle_grace_s
        self.done_ttl_s = done_ttl_s
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            # One immediate retry on a broken connection (say, a pooled socket Redis closed on
            # restart); none on a timeout, which would only double the wait. Retrying is safe:
            # reserve and settle are idempotent per reservation id.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._client: Redis = Redis.from_pool(pool)
        # register_script sends EVALSHA and, on NOSCRIPT (a restarted or failed-over Redis), loads
        # the script and runs it again.
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._refresh = self._client.register_script(_REFRESH)
        self._usage = self._client.register_script(_USAGE)
        self._seed = self._client.register_script(_SEED)
        # Set by the gateway (gateway.limits.seed): period counters missing in Redis are then seeded
        # from the ledger before anything is reserved on them. Without one they start at zero.
        self.seeder: Seeder | None = None

    def __repr__(self) -> str:
        kw = self._client.connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}"
        return f"RedisStateStore({where}/{kw.get('db', 0)}, prefix={self.prefix!r})"

    def _reserve_keys(self, tag: str, rid: str, buckets: Sequence[Bucket], slots: Sequence[Slot]) -> list[str]:
        base = f"{self.prefix}{{{tag}}}:"
        keys = [f"{base}r:{rid}"]
        for b, s in zip(buckets, slots, strict=True):
            cur = f"{base}c:{b.key}:{s.stamp}"
            if b.kind == "window":
                prev = f"{base}c:{b.key}:{s.prev_stamp}"
                keys += (cur, cur + ":z", prev, prev + ":z")
            else:
                keys += (cur, cur + ":z")
        return keys

    def _keys(self, tag: str, rid: str, buckets: Sequence[Bucket], slots: Sequence[Slot]) -> list[str]:
        base = f"{self.prefix}{{{tag}}}:"
        keys = [f"{base}r:{rid}"]
        for b, s in zip(buckets, slots, strict=True):
            cur = f"{base}c:{b.key}:{s.stamp}"
            prev = f"{base}c:{b.key}:{s.prev_stamp}"
            keys += (cur, cur + ":z", prev, prev + ":z")
        return keys

    async def _run(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise StateUnavailable(f"state store (redis) unavailable: {_describe(e)}") from e

    async def reserve(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> Decision:
        tag = check_buckets(buckets)
        check_reserve_args(reservation_id, ttl_s)
        now = time.time() if now is None else now
        if not buckets:
            return Decision(True, None, None, {}, {})
        slots = slots_of(buckets, now)
        hold_exp = now + ttl_s
        record_exp = hold_exp + self.settle_grace_s
        args: list[str | int] = [
            reservation_id,
            repr(now),
            repr(hold_exp),
            repr(record_exp),
            key_ttl_ms(record_exp, now),
        ]
        period_kind = "p" if self.seeder is None else "s"
        for b, s in zip(buckets, slots, strict=True):
            args.append(
                f"{'w' if b.kind == 'window' else period_kind}|{b.limit}|{b.amount}|{max(-1, b.limit - b.amount)}|"
                f"{s.rem_ms}|{key_ttl_ms(s.expires_at, now)}|{s.stamp}|{b.key}"
            )
        keys = self._reserve_keys(tag, reservation_id, buckets, slots)
        res = await self._run(self._reserve, keys, args)
        status = int(res[0])
        rounds = 0
        while status == 3:  # rare: a new period, or Redis lost its counters
            rounds += 1
            if rounds > _SEED_ROUNDS:
                raise StateUnavailable("state store (redis): budget counters keep disappearing; not seeded")
            await self._seed_counters(tag, [int(i) - 1 for i in res[2:]], buckets, slots, now)
            res = await self._run(self._reserve, keys, args)
            status = int(res[0])
        if status == -1:
            raise ValueError(f"reservation id {reservation_id!r} was already settled or released")
        if status == -2:
            raise ValueError(f"reservation id {reservation_id!r} is holding other buckets")
        counts = [(int(res[i]), int(res[i + 1])) for i in range(2, 2 + 2 * len(buckets), 2)]
        failed = int(res[1]) - 1 if int(res[1]) else None
        return decide(buckets, slots, counts, failed, status == 2)

    async def _seed_counters(self, tag: str, missing: list[int], buckets: Sequence[Bucket], slots: Sequence[Slot],
                             now: float) -> None:
        """Seed the current counters of buckets[missing] with what the seeder says they already spent."""
        assert self.seeder is not None
        chosen = [buckets[i] for i in missing]
        units = await self.seeder(tag, chosen, now)
        base = f"{self.prefix}{{{tag}}}:"
        keys: list[str] = []
        args: list[str | int] = []
        for i, n in zip(missing, units, strict=True):
            counter = f"{base}c:{buckets[i].key}:{slots[i].stamp}"
            keys += (counter, counter + ":z")
            args.append(f"{max(0, min(n, MAX_PERIOD_UNITS))}|{key_ttl_ms(slots[i].expires_at, now)}")
        await self._run(self._seed, keys, args)

    async def settle(
        self, reservation_id: str, buckets: Sequence[Bucket], actual: Mapping[str, int], now: float | None = None
    ) -> None:
        tag = check_settle_args(reservation_id, buckets, actual)
        now = time.time() if now is None else now
        if not buckets:
            return
        slots = slots_of(buckets, now)
        done_exp = now + self.done_ttl_s
        args: list[str | int] = [reservation_id, repr(now), repr(done_exp), key_ttl_ms(done_exp, now)]
        for b, s in zip(buckets, slots, strict=True):
            spent = actual.get(b.name)
            args.append(
                f"{s.stamp}|{s.prev_stamp}|{'' if spent is None else spent}|{b.amount}|"
                f"{key_ttl_ms(s.expires_at, now)}|{key_ttl_ms(s.prev_expires_at, now)}|{b.key}"
            )
        await self._run(self._settle, self._keys(tag, reservation_id, buckets, slots), args)

    async def release(self, reservation_id: str, buckets: Sequence[Bucket], now: float | None = None) -> None:
        await self.settle(reservation_id, buckets, {b.name: 0 for b in buckets}, now)

    async def refresh(
        self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float, now: float | None = None
    ) -> bool:
        tag = check_buckets(buckets)
        check_reserve_args(reservation_id, ttl_s)
        now = time.time() if now is None else now
        if not buckets:
            return False
        slots = slots_of(buckets, now)
        hold_exp = now + ttl_s
        record_exp = hold_exp + self.settle_grace_s
        args: list[str | int] = [reservation_id, repr(now), repr(hold_exp), repr(record_exp),
                                 key_ttl_ms(record_exp, now)]
        args += [f"{s.stamp}|{s.prev_stamp}|{b.key}" for b, s in zip(buckets, slots, strict=True)]
        return bool(await self._run(self._refresh, self._keys(tag, reservation_id, buckets, slots), args))

    async def usage(self, buckets: Sequence[Bucket], now: float | None = None) -> dict[str, int]:
        tag = check_buckets(buckets)
        now = time.time() if now is None else now
        if not buckets:
            return {}
        slots = slots_of(buckets, now)
        keys = self._keys(tag, "-", buckets, slots)[1:]
        args: list[str | int] = [repr(now), *("w" if b.kind == "window" else "p" for b in buckets)]
        res = await self._run(self._usage, keys, args)
        out: dict[str, int] = {}
        for i, (b, s) in enumerate(zip(buckets, slots, strict=True)):
            out[b.name] = used(b, int(res[2 * i]), int(res[2 * i + 1]), s.rem_ms)
        return out

    async def ping(self, timeout_s: float = 1.0) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return bool(await self._client.ping())
        except Exception as e:
            log.debug("state store ping failed: %s", _describe(e))
            return False

    async def aclose(self) -> None:
        # The client owns the pool (from_pool): this closes every connection.
        await self._client.aclose()
