"""The memory state store alone: the shared behaviour, plus what only memory has (bounded tables)."""

import asyncio
import random

import pytest

from gateway.store.state.base import Bucket, CheckedBuckets, Decision, check_buckets
from gateway.store.state.memory import Held, Lane, MemoryStateStore
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


# -- lanes: holds kept by their caller (the limits stage's path), same counters, no reservation ids ----


def lane_of(buckets: list[Bucket]) -> Lane:
    empty = [b._replace(amount=0) for b in buckets]
    check_buckets(empty)
    return Lane(CheckedBuckets(empty))


def held(store: MemoryStateStore, lane: Lane, amounts: list[int], now: float, ttl: float = TTL) -> Held:
    left: list[int] = []
    h = store.hold_lane(lane, amounts, ttl, now, left)
    assert isinstance(h, Held), h
    assert len(left) == len(amounts)
    return h


async def test_a_lane_hold_counts_until_settled_at_what_was_spent() -> None:
    store = MemoryStateStore()
    lane = lane_of(BUCKETS)
    left: list[int] = []
    h = store.hold_lane(lane, [100, 100, 1, 100], TTL, NOON, left)
    assert isinstance(h, Held)
    assert left == [10**9 - 100, 10**12 - 100, 10**6 - 1, 10**9 - 100]
    assert lane.ends == [NOON + 12 * 3600, NOON + 15.5 * 86400, NOON + 60, NOON + 60]
    assert await store.usage(BUCKETS, now=NOON) == {"tpd": 100, "tokens_month": 100, "rpm": 1, "tpm": 100}
    store.settle_held(h, [30, 30, 1, 30], now=NOON + 1)
    assert await store.usage(BUCKETS, now=NOON + 1) == {"tpd": 30, "tokens_month": 30, "rpm": 1, "tpm": 30}
    store.settle_held(h, [99, 99, 1, 99], now=NOON + 2)  # settled once: a second call changes nothing
    assert await store.usage(BUCKETS, now=NOON + 2) == {"tpd": 30, "tokens_month": 30, "rpm": 1, "tpm": 30}
    assert store.stats() == {"counters": 4, "holds": 0, "records": 0, "gc_entries": 4}


async def test_lane_and_id_holds_share_the_counters_and_refuse_alike() -> None:
    store = MemoryStateStore()
    b = [bucket("tpd", 250, 100)]
    lane = lane_of(b)
    assert (await store.reserve("by-id", b, TTL, now=NOON)).ok  # made the counter: the lane reads it again
    h = held(store, lane, [100], NOON)
    left: list[int] = [7]
    refused = store.hold_lane(lane, [100], TTL, NOON, left)
    assert isinstance(refused, Decision) and not refused.ok and left == []
    assert refused == await store.reserve("refused", b, TTL, now=NOON)  # the very same decision
    store.settle_held(h, [0], now=NOON)  # a release
    assert (await store.reserve("again", b, TTL, now=NOON)).ok
    assert await store.usage(b, now=NOON) == {"tpd": 200}


async def test_an_unsettled_lane_hold_expires_and_a_late_settle_still_counts() -> None:
    store = MemoryStateStore()
    b = [bucket("tpd", 100, 80), bucket("rpm", 10, 1, period="minute")]
    lane = lane_of(b)
    h = held(store, lane, [80, 1], NOON, ttl=30)
    assert isinstance(store.hold_lane(lane, [80, 1], 30, NOON + 29, []), Decision)
    held(store, lane, [80, 1], NOON + 30, ttl=30)  # the first hold expired: its 80 and 1 went back
    assert await store.usage(b, now=NOON + 31) == {"tpd": 80, "rpm": 1}
    store.settle_held(h, [15, 1], now=NOON + 31)  # the spend is real, and counts in its period
    assert await store.usage(b, now=NOON + 31) == {"tpd": 95, "rpm": 2}
    assert h not in store._holding


async def test_a_refreshed_lane_hold_outlives_its_ttl_and_expires_once_no_longer_refreshed() -> None:
    store = MemoryStateStore()
    b = [bucket("tpd", 100, 80)]
    lane = lane_of(b)
    h = held(store, lane, [80], NOON, ttl=30)
    other = held(store, lane_of([bucket("tokens_month", 10**6, 1, period="month")]), [1], NOON, ttl=30)
    assert store.refresh_held(h, 30, NOON + 20) and store.refresh_held(h, 30, NOON + 40)
    assert isinstance(store.hold_lane(lane, [80], 30, NOON + 69.9, []), Decision)  # still held
    assert not store.refresh_held(other, 30, NOON + 40)  # never refreshed: it expired at NOON + 30
    assert await store.usage(b, now=NOON + 70) == {"tpd": 0}  # 30 s after its last refresh
    assert not store.refresh_held(h, 30, NOON + 70)
    held(store, lane, [80], NOON + 70, ttl=30)
    store.settle_held(h, [15], now=NOON + 71)  # the late settle counts where it was held
    assert await store.usage(b, now=NOON + 71) == {"tpd": 95}
    assert not store.refresh_held(h, 30, NOON + 72)  # settled
    assert store._holding and not store._unordered


async def test_a_lane_hold_settled_before_its_expiry_was_collected_counts_once() -> None:
    store = MemoryStateStore()
    b = [bucket("tpd", 1000, 100)]
    h = held(store, lane_of(b), [100], NOON, ttl=30)
    store.settle_held(h, [40], now=NOON + 45)  # past its expiry, before any call collected it
    assert await store.usage(b, now=NOON + 46) == {"tpd": 40}
    assert store.stats()["holds"] == 0


async def test_a_lane_follows_periods_counters_and_stores() -> None:
    b = [bucket("tpd", 10**6, 0), bucket("rpm", 100, 0, period="minute")]
    lane = lane_of(b)
    first, second = MemoryStateStore(), MemoryStateStore()
    day = 86_400
    held(first, lane, [10, 1], NOON, ttl=3 * day)
    held(second, lane, [5, 1], NOON)  # another store: the lane reads that one's counters
    assert await first.usage(b, now=NOON) == {"tpd": 10, "rpm": 1}
    assert await second.usage(b, now=NOON) == {"tpd": 5, "rpm": 1}
    held(first, lane, [10, 1], NOON + 61, ttl=3 * day)  # the next minute: the previous one is weighted in
    assert await first.usage(b, now=NOON + 61) == {"tpd": 20, "rpm": 2}
    held(first, lane, [10, 1], NOON + 30, ttl=3 * day)  # the clock stepped back: that minute is read again
    assert await first.usage(b, now=NOON + 30) == {"tpd": 30, "rpm": 2}
    held(first, lane, [10, 1], NOON + day, ttl=3 * day)  # the next day
    assert await first.usage(b, now=NOON + day) == {"tpd": 10, "rpm": 1}


def _ops(seed: int) -> list[tuple[str, int, float, list[int]]]:
    rng = random.Random(seed)
    t, out = NOON - 90, []
    for i in range(600):
        # Forward only: after a clock step back, a record the id store already dropped may be one a
        # lane's caller still holds (test_a_lane_follows_periods_counters_and_stores covers the lane).
        t += rng.choice([0.0, 0.2, 1.5, 7.0, 29.0, 61.0])
        amounts = [rng.randrange(0, 40), rng.randrange(0, 40), rng.choice([0, 1]), rng.randrange(0, 40)]
        out.append((rng.choice(["hold", "hold", "hold", "settle", "release"]), i, t, amounts))
    return out


@pytest.mark.parametrize("seed", range(12))
async def test_lanes_decide_and_count_as_reservation_ids_do(seed: int) -> None:
    """The same random sequence of holds (tight limits, so many are refused), settlements, releases
    and abandoned holds expiring, settled late or past their grace, across minutes:
    through a lane on one store and through ids on another, every decision and every count agree."""
    b = [bucket("tpd", 700, 0), bucket("tokens_month", 900, 0, period="month"),
         bucket("rpm", 12, 0, period="minute"), bucket("tpm", 300, 0, period="minute")]
    lane = lane_of(b)
    by_lane, by_id = MemoryStateStore(settle_grace_s=120), MemoryStateStore(settle_grace_s=120)
    open_lane: dict[int, Held] = {}
    open_ids: list[int] = []
    for op, i, t, amounts in _ops(seed):
        if op == "hold":
            left: list[int] = []
            got = by_lane.hold_lane(lane, amounts, 45, t, left)
            want = await by_id.reserve(f"r{i}", [x._replace(amount=a) for x, a in zip(b, amounts, strict=True)], 45,
                                       now=t)
            if isinstance(got, Decision):
                assert got == want, (i, t)
            else:
                assert want.ok and left == [want.remaining[x.name] for x in b], (i, t)
                open_lane[i] = got
                open_ids.append(i)
        elif open_ids:
            j = open_ids.pop(0)
            spent = [0, 0, 0, 0] if op == "release" else [a // 2 for a in amounts]
            by_lane.settle_held(open_lane.pop(j), spent, now=t)
            await by_id.settle(f"r{j}", b, {x.name: s for x, s in zip(b, spent, strict=True)}, now=t)
        assert await by_lane.usage(b, now=t) == await by_id.usage(b, now=t), (i, t)
