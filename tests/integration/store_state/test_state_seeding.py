"""Seeding period counters: the memory store at start-up, Redis on demand when a counter is missing
(a new period, or a Redis that lost its data), once, atomically, with several replicas at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from gateway.store.state.base import Bucket, SeedValue, StateUnavailable
from gateway.store.state.memory import MemoryStateStore
from tests.integration.store_state.conftest import REDIS_URL, RedisFactory, delete_prefix
from tests.unit.store_state.behaviour import NOON, TTL, bucket, ts

GROUP = [
    bucket("tokens_per_day", 1000, 10),
    bucket("usd_per_month", 10**18, 7, period="month"),
    bucket("requests_per_minute", 100, 1, period="minute"),
]
BIG = 9_102_399_751_580_331  # past 2**53: compared and set as decimal strings


class FakeSeeder:
    """What the ledger would say, per bucket key; counts how often it was asked."""

    def __init__(self, spent: dict[str, int], gate: asyncio.Event | None = None) -> None:
        self.spent, self.gate, self.calls = spent, gate, 0
        self.asked: list[list[str]] = []

    async def __call__(self, tag: str, buckets: Sequence[Bucket], now: float) -> list[int]:
        self.calls += 1
        self.asked.append([b.key for b in buckets])
        if self.gate is not None:
            await self.gate.wait()
        return [self.spent.get(b.key, 0) for b in buckets]


SPENT = {"tenant:acme:tokens_per_day": 600, "tenant:acme:usd_per_month": BIG}


async def test_redis_seeds_missing_period_counters_once(make_redis_store: RedisFactory) -> None:
    store = await make_redis_store()
    store.seeder = seeder = FakeSeeder(SPENT)
    d = await store.reserve("r1", GROUP, TTL, now=NOON)
    assert d.ok and d.remaining["tokens_per_day"] == 1000 - 600 - 10
    # only the period counters are seeded; the minute window starts empty
    assert seeder.asked == [["tenant:acme:tokens_per_day", "tenant:acme:usd_per_month"]]
    assert await store.usage(GROUP, now=NOON) == {"tokens_per_day": 610, "usd_per_month": BIG + 7,
                                                  "requests_per_minute": 1}
    for i in range(5):  # seeded: the hot path never asks again
        await store.settle(f"r{i + 1}", GROUP, {"tokens_per_day": 10}, now=NOON)
        assert (await store.reserve(f"r{i + 2}", GROUP, TTL, now=NOON)).ok
    assert seeder.calls == 1
    # the next day's counter is missing: seeded once, for the day only (the month's is there)
    assert (await store.reserve("tomorrow", GROUP, TTL, now=NOON + 86400)).ok
    assert seeder.asked[1:] == [["tenant:acme:tokens_per_day"]]


async def test_redis_that_lost_its_data_is_reseeded(make_redis_store: RedisFactory, redis_prefix: str) -> None:
    store = await make_redis_store()
    store.seeder = seeder = FakeSeeder(SPENT)
    assert (await store.reserve("r1", GROUP, TTL, now=NOON)).ok
    await delete_prefix(redis_prefix)  # what FLUSHDB or a restart without persistence does to our keys
    assert (await store.reserve("r2", GROUP, TTL, now=NOON)).ok
    assert seeder.calls == 2
    assert (await store.usage(GROUP, now=NOON))["tokens_per_day"] == 610
    # a settle of a hold made before the loss counts (its record is gone: it counts now)
    await store.settle("r1", GROUP, {"tokens_per_day": 4}, now=NOON)
    assert (await store.usage(GROUP, now=NOON))["tokens_per_day"] == 614


async def test_a_counter_made_before_seeding_becomes_the_larger_never_the_sum(
        make_redis_store: RedisFactory, redis_prefix: str) -> None:
    plain = await make_redis_store()  # a settle of a call from before the loss, counted before any reserve
    await plain.settle("old", GROUP[:1], {"tokens_per_day": 50}, now=NOON)
    seeded = await make_redis_store()
    seeded.seeder = FakeSeeder(SPENT)  # the ledger has it among its 600
    assert (await seeded.reserve("r", GROUP, TTL, now=NOON)).ok
    assert (await seeded.usage(GROUP, now=NOON))["tokens_per_day"] == 610
    await delete_prefix(redis_prefix)
    await plain.settle("old2", GROUP[:1], {"tokens_per_day": 900}, now=NOON)  # more than the ledger knows of
    assert (await seeded.reserve("r2", GROUP, TTL, now=NOON)).ok
    assert (await seeded.usage(GROUP, now=NOON))["tokens_per_day"] == 910


async def test_two_replicas_seeding_at_once_count_once(make_redis_store: RedisFactory) -> None:
    """Both find the counters missing and ask their ledger before either seeds: one seeding applies."""
    gate = asyncio.Event()
    a, b = await make_redis_store(), await make_redis_store()
    seeders = [FakeSeeder(SPENT, gate), FakeSeeder(SPENT, gate)]
    a.seeder, b.seeder = seeders
    tasks = [asyncio.create_task(s.reserve(f"r{i}", GROUP, TTL, now=NOON)) for i, s in enumerate([a, b] * 10)]
    async with asyncio.timeout(5):
        while sum(s.calls for s in seeders) < 20:  # noqa: ASYNC110  # every reserve waits to seed
            await asyncio.sleep(0.01)
    gate.set()
    assert all(d.ok for d in await asyncio.gather(*tasks))
    assert await a.usage(GROUP, now=NOON) == {"tokens_per_day": 600 + 20 * 10, "usd_per_month": BIG + 20 * 7,
                                              "requests_per_minute": 20}


async def test_a_seeder_that_fails_holds_nothing(make_redis_store: RedisFactory) -> None:
    store = await make_redis_store()

    async def down(tag: str, buckets: Sequence[Bucket], now: float) -> list[int]:
        raise StateUnavailable("ledger down")

    store.seeder = down
    with pytest.raises(StateUnavailable):
        await store.reserve("r1", GROUP, TTL, now=NOON)
    store.seeder = FakeSeeder(SPENT)
    assert await store.usage(GROUP, now=NOON) == {"tokens_per_day": 0, "usd_per_month": 0, "requests_per_minute": 0}
    assert (await store.reserve("r1", GROUP, TTL, now=NOON)).ok


async def test_seeded_counters_expire_with_their_period(make_redis_store: RedisFactory, redis_prefix: str) -> None:
    store = await make_redis_store()
    store.seeder = FakeSeeder(SPENT)
    assert (await store.reserve("r1", GROUP, TTL, now=NOON)).ok
    client = Redis.from_url(REDIS_URL)
    try:
        day = f"{redis_prefix}{{t:acme}}:c:tenant:acme:tokens_per_day:20261115"
        for key in (day, day + ":z"):
            # the day ends 12 h after NOON; counters are kept an hour past it
            assert 13 * 3600 * 1000 - 5000 < await client.pttl(key) <= 13 * 3600 * 1000
    finally:
        await client.aclose()


async def test_memory_seed_takes_the_larger_and_makes_lanes_read_again() -> None:
    store = MemoryStateStore()
    assert (await store.reserve("r1", GROUP, TTL, now=NOON)).ok
    store.seed([SeedValue("t:acme", "tenant:acme:tokens_per_day", "day", 600),
                SeedValue("t:acme", "tenant:acme:usd_per_month", "month", 3)], now=NOON)
    assert await store.usage(GROUP, now=NOON) == {"tokens_per_day": 600, "usd_per_month": 7,
                                                  "requests_per_minute": 1}
    # another day: a new counter
    store.seed([SeedValue("t:acme", "tenant:acme:tokens_per_day", "day", 5)], now=ts(2026, 11, 16, 1))
    assert (await store.usage(GROUP, now=ts(2026, 11, 16, 1)))["tokens_per_day"] == 5
