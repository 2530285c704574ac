"""Latency of the state plane's hot path: one reserve + settle over six buckets, memory vs Redis.

The buckets are what a tenant with full limits draws on: day and month token budgets, day and
month dollar budgets (pico-dollars), requests and tokens per minute. Calls run one at a time
(latency, not throughput); then a concurrent burst gives a throughput figure. Redis keys go under
a throwaway prefix that is deleted afterwards.

    .venv/bin/python bench/limits/state_bench.py [--redis-url redis://127.0.0.1:6379/0] [-n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from redis.asyncio import Redis

from gateway.store.state.base import Bucket, StateStore
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.redis import RedisStateStore

TAG = "t:bench"
BUCKETS = [
    Bucket("tenant:bench:tokens_per_day", TAG, 10**15, "period", "day", 1200, "tenant.tokens_per_day"),
    Bucket("tenant:bench:tokens_per_month", TAG, 10**15, "period", "month", 1200, "tenant.tokens_per_month"),
    Bucket("tenant:bench:usd_per_day", TAG, 10**18, "period", "day", 720_000_000, "tenant.usd_per_day"),
    Bucket("tenant:bench:usd_per_month", TAG, 10**18, "period", "month", 720_000_000, "tenant.usd_per_month"),
    Bucket("tenant:bench:requests_per_minute", TAG, 10**9, "window", "minute", 1, "tenant.requests_per_minute"),
    Bucket("tenant:bench:tokens_per_minute", TAG, 10**10, "window", "minute", 1200, "tenant.tokens_per_minute"),
]
ACTUAL = {
    "tenant.tokens_per_day": 800,
    "tenant.tokens_per_month": 800,
    "tenant.usd_per_day": 480_000_000,
    "tenant.usd_per_month": 480_000_000,
}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def measure(store: StateStore, n: int, warmup: int, tag: str) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {"reserve": [], "settle": [], "pair": []}
    for i in range(warmup + n):
        rid = f"{tag}{i}"
        t0 = time.perf_counter()
        d = await store.reserve(rid, BUCKETS, 300.0)
        t1 = time.perf_counter()
        await store.settle(rid, BUCKETS, ACTUAL)
        t2 = time.perf_counter()
        if not d.ok:
            raise SystemExit(f"reserve refused: {d}")
        if i >= warmup:
            res["reserve"].append((t1 - t0) * 1000)
            res["settle"].append((t2 - t1) * 1000)
            res["pair"].append((t2 - t0) * 1000)
    return res


async def burst(store: StateStore, n: int, concurrency: int, tag: str) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await store.reserve(f"{tag}{i}", BUCKETS, 300.0)
            await store.settle(f"{tag}{i}", BUCKETS, ACTUAL)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


def report(name: str, res: dict[str, list[float]], pairs_per_s: float) -> None:
    for op, xs in res.items():
        print(
            f"{name:<7} {op:<8} median {statistics.median(xs):7.3f} ms   p99 {pct(xs, 99):7.3f} ms   "
            f"max {max(xs):7.3f} ms   (n={len(xs)})"
        )
    print(f"{name:<7} burst    {pairs_per_s:,.0f} reserve+settle pairs/s at 32 in flight")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default=os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("-n", type=int, default=5000, help="measured reserve+settle pairs per back end")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--skip-redis", action="store_true")
    args = ap.parse_args()

    mem = MemoryStateStore()
    report("memory", await measure(mem, args.n, args.warmup, "m"), await burst(mem, args.n, 32, "mb"))
    if args.skip_redis:
        return 0
    prefix = f"gwbench:{os.urandom(4).hex()}:"
    red = RedisStateStore(args.redis_url, prefix=prefix)
    try:
        if not await red.ping():
            print(f"Redis at {args.redis_url} does not answer", file=sys.stderr)
            return 2
        res = await measure(red, args.n, args.warmup, "r")
        report("redis", res, await burst(red, args.n, 32, "rb"))
        median = statistics.median(res["reserve"])
        print(
            f"target: reserve median < 1 ms on loopback Redis -> {median:.3f} ms "
            f"({'met' if median < 1.0 else 'MISSED'})"
        )
        return 0 if median < 1.0 else 1
    finally:
        await red.aclose()
        client = Redis.from_url(args.redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
