"""The memory state store alone: the shared behaviour, plus what only memory has (bounded tables)."""

import asyncio
import math

import pytest

from gateway.store.state.base import Bucket, CheckedBuckets, check_buckets
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.periods import MEMORY_DONE_TTL_S
from tests.unit.store_state.behaviour import NOON, TTL, StateStoreBehaviour, bucket


class TestMemoryStateStore(StateStoreBehaviour):
    pass


BUCKETS = [
    bucket("tpd", 10**9, 100),
    bucket("tokens_month", 10**12, 100, period="month"),
    bucket("rpm", 10**6, 1, period="minute"),
    bucket("tpm", 10**9, 100, period="minute"),
]


async def test_old_periods_windows_and_records_are_dropped() -> None:
    store = MemoryStateStore()
    for day in range(400):
        at = NOON + day * 86_400
        for i in range(5):
            assert (await store.reserve(f"d{day}-{i}", BUCKETS, TTL, now=at + i)).ok
            await store.settle(f"d{day}-{i}", BUCKETS, {"tpd": 1}, now=at + i + 1)
        stats = store.stats()
        # Today's day and month counters, plus the minute counters still in the window, plus
        # yesterday's day counter kept an hour past midnight at most; records of the last 5 minutes.
        assert stats["counters"] <= 8, stats
        assert stats["records"] <= 5, stats
        assert stats["holds"] == 0, stats
        assert stats["gc_entries"] <= 2 * (stats["counters"] + stats["records"]) + 1024
    assert await store.usage(BUCKETS[:1], now=NOON + 399 * 86_400 + 10) == {"tpd": 5}


async def test_abandoned_holds_are_purged_and_their_records_dropped() -> None:
    store = MemoryStateStore(settle_grace_s=60)
    for i in range(1000):
        assert (await store.reserve(f"crash-{i}", BUCKETS, 30, now=NOON + i * 0.01)).ok
    assert store.stats()["holds"] == 4000
    assert await store.usage(BUCKETS, now=NOON + 100) == {"tpd": 0, "tokens_month": 0, "rpm": 0, "tpm": 0}
    assert store.stats()["holds"] == 0
    # Records live ttl + grace (90 s); each call drops a bounded batch of what expired.
    for i in range(40):
        await store.usage(BUCKETS[:1], now=NOON + 200 + i)
    assert store.stats()["records"] == 0


async def test_settled_ids_are_remembered_for_the_done_ttl_only() -> None:
    store = MemoryStateStore()
    b = BUCKETS[:1]
    assert (await store.reserve("r1", b, TTL, now=NOON)).ok
    await store.settle("r1", b, {"tpd": 5}, now=NOON)
    await store.settle("r1", b, {"tpd": 5}, now=NOON + MEMORY_DONE_TTL_S - 1)
    assert await store.usage(b, now=NOON + MEMORY_DONE_TTL_S) == {"tpd": 5}
    assert store.stats()["records"] == 0
    # Beyond the idempotency window the id is unknown: a settle counts again (money spent, nothing held).
    await store.settle("r1", b, {"tpd": 5}, now=NOON + MEMORY_DONE_TTL_S + 1)
    assert await store.usage(b, now=NOON + MEMORY_DONE_TTL_S + 1) == {"tpd": 10}


async def test_the_gc_heap_is_rebuilt_when_stale_entries_pile_up() -> None:
    store = MemoryStateStore(settle_grace_s=10**6, done_ttl_s=10**6)
    b = BUCKETS[:1]
    for i in range(3000):
        assert (await store.reserve(f"r{i}", b, 10**6, now=NOON)).ok
        await store.settle(f"r{i}", b, {}, now=NOON)
    stats = store.stats()
    assert stats["records"] == 3000
    assert stats["gc_entries"] <= 2 * (stats["counters"] + stats["records"]) + 1024


async def test_settled_holds_leave_nothing_in_the_counters_or_the_hold_queue() -> None:
    store = MemoryStateStore()
    b = BUCKETS[:1]
    for i in range(5000):
        assert (await store.reserve(f"r{i}", b, 3600, now=NOON)).ok
        await store.settle(f"r{i}", b, {}, now=NOON)
    assert store.stats()["holds"] == 0
    assert not store._holding
    assert await store.usage(b, now=NOON) == {"tpd": 5000 * 100}  # settled as reserved: each kept its 100
    # One second later the idempotency window is over: the done records leave, a batch per call.
    for i in range(100):
        await store.usage(b, now=NOON + MEMORY_DONE_TTL_S + i * 0.001)
    assert store.stats()["records"] == 0


async def test_holds_with_different_ttls_expire_each_on_time() -> None:
    store = MemoryStateStore()
    b = [bucket("tpd", 100, 40)]
    assert (await store.reserve("long", b, 600, now=NOON)).ok
    assert (await store.reserve("short", b, 10, now=NOON)).ok  # expires before the one queued ahead of it
    assert not (await store.reserve("third", b, 600, now=NOON + 9)).ok
    assert (await store.reserve("third", b, 600, now=NOON + 10)).ok
    assert await store.usage(b, now=NOON + 10) == {"tpd": 80}
    assert await store.usage(b, now=NOON + 600) == {"tpd": 40}
    assert await store.usage(b, now=NOON + 610) == {"tpd": 0}


async def test_concurrent_reserves_are_atomic_without_a_lock() -> None:
    store = MemoryStateStore()
    b = [bucket("tpd", 700, 7), bucket("rpm", 10**6, 1, period="minute")]
    decisions = await asyncio.gather(*(store.reserve(f"r{i}", b, TTL) for i in range(500)))
    assert sum(d.ok for d in decisions) == 100


async def test_ping_and_aclose() -> None:
    store = MemoryStateStore()
    assert await store.ping()
    await store.aclose()


# -- holds kept by their caller (the limits stage's path): same counters, no reservation ids --------


def checked(buckets: list[Bucket]) -> CheckedBuckets:
    check_buckets(buckets)
    return CheckedBuckets(buckets)


async def test_a_kept_hold_counts_until_settled_at_what_was_spent() -> None:
    store = MemoryStateStore()
    b = checked(BUCKETS)
    decision, held = store.hold(b, TTL, now=NOON)
    assert decision.ok and held is not None
    assert decision.remaining["tpd"] == 10**9 - 100
    assert await store.usage(b, now=NOON) == {"tpd": 100, "tokens_month": 100, "rpm": 1, "tpm": 100}
    store.settle_held(held, [30, 30, 1, 30], now=NOON + 1)
    assert await store.usage(b, now=NOON + 1) == {"tpd": 30, "tokens_month": 30, "rpm": 1, "tpm": 30}
    store.settle_held(held, [99, 99, 1, 99], now=NOON + 2)  # settled once: a second call changes nothing
    assert await store.usage(b, now=NOON + 2) == {"tpd": 30, "tokens_month": 30, "rpm": 1, "tpm": 30}
    assert store.stats() == {"counters": 4, "holds": 0, "records": 0, "gc_entries": 4}


async def test_kept_and_id_holds_share_the_counters_and_refuse_alike() -> None:
    store = MemoryStateStore()
    b = checked([bucket("tpd", 250, 100)])
    assert (await store.reserve("by-id", b, TTL, now=NOON)).ok
    decision, held = store.hold(b, TTL, now=NOON)
    assert decision.ok and held is not None
    refused, none = store.hold(b, TTL, now=NOON)
    assert not refused.ok and none is None and refused.failed is not None and refused.failed.name == "tpd"
    assert refused.retry_after_s is not None
    store.settle_held(held, [0], now=NOON)  # a release
    assert (await store.reserve("again", b, TTL, now=NOON)).ok
    assert await store.usage(b, now=NOON) == {"tpd": 200}


async def test_an_unsettled_kept_hold_expires_and_a_late_settle_still_counts() -> None:
    store = MemoryStateStore()
    b = checked([bucket("tpd", 100, 80), bucket("rpm", 10, 1, period="minute")])
    _, held = store.hold(b, 30, now=NOON)
    assert held is not None
    assert not store.hold(b, 30, now=NOON + 29)[0].ok
    assert store.hold(b, 30, now=NOON + 30)[0].ok  # the first hold expired: its 80 and 1 went back
    assert await store.usage(b, now=NOON + 31) == {"tpd": 80, "rpm": 1}
    store.settle_held(held, [15, 1], now=NOON + 31)  # the spend is real, and counts in its period
    assert await store.usage(b, now=NOON + 31) == {"tpd": 95, "rpm": 2}
    assert not store._holding or held not in store._holding


async def test_a_kept_hold_settled_before_its_expiry_was_collected_counts_once() -> None:
    store = MemoryStateStore()
    b = checked([bucket("tpd", 1000, 100)])
    _, held = store.hold(b, 30, now=NOON)
    assert held is not None
    store.settle_held(held, [40], now=NOON + 45)  # past its expiry, before any call collected it
    assert await store.usage(b, now=NOON + 46) == {"tpd": 40}
    assert store.stats()["holds"] == 0


def test_a_kept_hold_needs_a_finite_positive_ttl() -> None:
    store = MemoryStateStore()
    for ttl in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="ttl_s"):
            store.hold(checked(BUCKETS), ttl, now=NOON)
