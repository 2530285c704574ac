"""The state stores' behaviour, written once and run on every back end.

`StateStoreBehaviour` is not collected here (no Test prefix): tests/unit/store_state runs it on the
memory store, tests/integration/store_state on memory and real Redis, each through its own `store`
fixture. Time is always passed as `now`, so nothing sleeps and both back ends see the same clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import pytest

from gateway.store.state.base import Bucket, StateStore
from gateway.store.state.periods import DEFAULT_SETTLE_GRACE_S, MIN_RETRY_AFTER_S


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


NOON = ts(2026, 11, 15, 12)  # mid-month, on a minute boundary: the day ends in 12 h, the month in 15.5 days
TTL = 60.0


def bucket(
    name: str, limit: int, amount: int, *, period: Literal["day", "month", "minute"] = "day", tag: str = "t:acme"
) -> Bucket:
    kind: Literal["period", "window"] = "window" if period == "minute" else "period"
    return Bucket(f"tenant:acme:{name}", tag, limit, kind, period, amount, name)


def with_amount(buckets: list[Bucket], amount: int) -> list[Bucket]:
    return [Bucket(b.key, b.hash_tag, b.limit, b.kind, b.period, amount, b.name) for b in buckets]


class StateStoreBehaviour:
    # -- fit and refuse ------------------------------------------------------------------------

    async def test_reserves_fit_until_the_limit_then_refuse(self, store: StateStore) -> None:
        b = [bucket("tokens_per_day", 100, 40)]
        d1 = await store.reserve("r1", b, TTL, now=NOON)
        d2 = await store.reserve("r2", b, TTL, now=NOON)
        d3 = await store.reserve("r3", b, TTL, now=NOON)
        assert (d1.ok, d1.failed, d1.retry_after_s, d1.remaining) == (True, None, None, {"tokens_per_day": 60})
        assert (d2.ok, d2.remaining) == (True, {"tokens_per_day": 20})
        assert (d3.ok, d3.failed) == (False, b[0])
        assert d3.remaining == {"tokens_per_day": 20}  # refused: nothing was taken
        assert d3.retry_after_s == pytest.approx(12 * 3600)  # the day rolls over at midnight UTC
        assert await store.usage(b, now=NOON) == {"tokens_per_day": 80}
        exact = with_amount(b, 20)
        assert (await store.reserve("r4", exact, TTL, now=NOON)).ok  # used + amount == limit fits
        assert (await store.usage(b, now=NOON)) == {"tokens_per_day": 100}

    async def test_all_or_nothing_across_buckets_and_the_first_failure_is_named(self, store: StateStore) -> None:
        day, month, rpm = (
            bucket("tpd", 1000, 30),
            bucket("tpm_month", 50, 30, period="month"),
            bucket("rpm", 5, 1, period="minute"),
        )
        assert (await store.reserve("r1", [day, month, rpm], TTL, now=NOON)).ok
        d = await store.reserve("r2", [day, month, rpm], TTL, now=NOON)
        assert not d.ok and d.failed == month
        assert await store.usage([day, month, rpm], now=NOON) == {"tpd": 30, "tpm_month": 30, "rpm": 1}
        # Two failing buckets: the first one given is reported.
        tight_day = bucket("tpd", 40, 30)
        d = await store.reserve("r3", [tight_day, month], TTL, now=NOON)
        assert not d.ok and d.failed == tight_day
        assert d.remaining == {"tpd": 10, "tpm_month": 20}

    async def test_remaining_and_reset_for_every_bucket(self, store: StateStore) -> None:
        bs = [
            bucket("tpd", 1000, 100),
            bucket("usd_month", 10**6, 2500, period="month"),
            bucket("rpm", 10, 1, period="minute"),
            bucket("tpm", 5000, 100, period="minute"),
        ]
        d = await store.reserve("r1", bs, TTL, now=NOON + 10)
        assert d.ok
        assert d.remaining == {"tpd": 900, "usd_month": 997_500, "rpm": 9, "tpm": 4900}
        assert d.reset_s == pytest.approx({"tpd": 12 * 3600 - 10, "usd_month": 15.5 * 86400 - 10, "rpm": 50, "tpm": 50})

    async def test_an_amount_above_the_limit_never_fits(self, store: StateStore) -> None:
        for b in (bucket("tpd", 10, 11), bucket("tpm", 10, 11, period="minute")):
            d = await store.reserve("r-" + b.name, [b], TTL, now=NOON)
            assert not d.ok and d.failed == b and d.retry_after_s is None
            assert d.remaining == {b.name: 10}

    async def test_zero_amounts_and_zero_limits(self, store: StateStore) -> None:
        zero = [bucket("tpd", 0, 0), bucket("rpm", 0, 0, period="minute")]
        d = await store.reserve("r1", zero, TTL, now=NOON)
        assert d.ok and d.remaining == {"tpd": 0, "rpm": 0}
        await store.settle("r1", zero, {"tpd": 7}, now=NOON)  # usage is recorded even with nothing held
        assert await store.usage(zero, now=NOON) == {"tpd": 7, "rpm": 0}
        assert not (await store.reserve("r2", with_amount(zero, 1), TTL, now=NOON)).ok

    async def test_empty_bucket_lists_are_no_ops(self, store: StateStore) -> None:
        d = await store.reserve("r1", [], TTL, now=NOON)
        assert (d.ok, d.failed, d.remaining, d.reset_s) == (True, None, {}, {})
        await store.settle("r1", [], {}, now=NOON)
        await store.release("r1", [], now=NOON)
        assert await store.usage([], now=NOON) == {}

    async def test_units_past_2_to_the_53_are_exact(self, store: StateStore) -> None:
        # Pico-dollars: a USD 10,000 monthly budget is 1e16 units, where doubles step by 2.
        limit = 10**16 + 3
        bs = [bucket("usd_month", limit, 10**16, period="month")]
        assert (await store.reserve("r1", bs, TTL, now=NOON)).ok
        d = await store.reserve("r2", with_amount(bs, 4), TTL, now=NOON)
        assert not d.ok and d.remaining == {"usd_month": 3}
        d = await store.reserve("r3", with_amount(bs, 3), TTL, now=NOON)
        assert d.ok and d.remaining == {"usd_month": 0}
        await store.settle("r1", bs, {"usd_month": 10**16 - 1}, now=NOON)
        assert await store.usage(bs, now=NOON) == {"usd_month": 10**16 + 2}

    # -- settle and release --------------------------------------------------------------------

    async def test_settle_lower_higher_and_missing_names(self, store: StateStore) -> None:
        tpd, usd = bucket("tpd", 1000, 100), bucket("usd_day", 5000, 400)
        bs = [tpd, usd]
        assert (await store.reserve("low", bs, TTL, now=NOON)).ok
        await store.settle("low", bs, {"tpd": 30, "usd_day": 120}, now=NOON)
        assert await store.usage(bs, now=NOON) == {"tpd": 30, "usd_day": 120}
        assert (await store.reserve("high", bs, TTL, now=NOON)).ok
        await store.settle("high", bs, {"tpd": 250}, now=NOON)  # usd_day missing: the reserved 400 stands
        assert await store.usage(bs, now=NOON) == {"tpd": 280, "usd_day": 520}

    async def test_settling_above_the_limit_is_recorded_and_blocks_what_follows(self, store: StateStore) -> None:
        b = [bucket("tpd", 100, 90)]
        assert (await store.reserve("r1", b, TTL, now=NOON)).ok
        await store.settle("r1", b, {"tpd": 130}, now=NOON)  # the provider overran its max_tokens
        assert await store.usage(b, now=NOON) == {"tpd": 130}
        d = await store.reserve("r2", with_amount(b, 1), TTL, now=NOON)
        assert not d.ok and d.remaining == {"tpd": 0}

    async def test_release_gives_everything_back(self, store: StateStore) -> None:
        bs = [bucket("tpd", 100, 70), bucket("rpm", 1, 1, period="minute")]
        assert (await store.reserve("r1", bs, TTL, now=NOON)).ok
        assert not (await store.reserve("r2", bs, TTL, now=NOON)).ok
        await store.release("r1", bs, now=NOON)
        assert await store.usage(bs, now=NOON) == {"tpd": 0, "rpm": 0}
        assert (await store.reserve("r2", bs, TTL, now=NOON)).ok

    async def test_settle_and_release_are_idempotent(self, store: StateStore) -> None:
        b = [bucket("tpd", 1000, 100)]
        for rid in ("a", "b", "c"):
            assert (await store.reserve(rid, b, TTL, now=NOON)).ok
        await store.settle("a", b, {"tpd": 40}, now=NOON)
        await store.settle("a", b, {"tpd": 40}, now=NOON + 1)
        await store.release("a", b, now=NOON + 2)
        await store.release("b", b, now=NOON)
        await store.release("b", b, now=NOON)
        await store.settle("b", b, {"tpd": 99}, now=NOON)  # released first: the settle does nothing
        await store.settle("c", b, {"tpd": 10}, now=NOON)
        assert await store.usage(b, now=NOON) == {"tpd": 50}

    async def test_a_repeated_reserve_holds_once_and_a_used_id_is_refused(self, store: StateStore) -> None:
        b = [bucket("tpd", 100, 60)]
        assert (await store.reserve("r1", b, TTL, now=NOON)).remaining == {"tpd": 40}
        again = await store.reserve("r1", b, TTL, now=NOON + 1)  # e.g. a retry after a lost reply
        assert again.ok and again.remaining == {"tpd": 40}
        assert await store.usage(b, now=NOON) == {"tpd": 60}
        with pytest.raises(ValueError, match="other buckets"):
            await store.reserve("r1", [bucket("other", 100, 1)], TTL, now=NOON + 1)
        await store.settle("r1", b, {"tpd": 10}, now=NOON + 2)
        with pytest.raises(ValueError, match="already settled"):
            await store.reserve("r1", b, TTL, now=NOON + 3)
        assert await store.usage(b, now=NOON + 3) == {"tpd": 10}

    async def test_settling_an_unknown_reservation_records_the_usage_once(self, store: StateStore) -> None:
        b = [bucket("tpd", 1000, 100)]
        await store.settle("never-reserved", b, {"tpd": 25}, now=NOON)
        await store.settle("never-reserved", b, {"tpd": 25}, now=NOON)
        await store.settle("never-reserved-2", b, {}, now=NOON)  # no actual: the bucket's amount
        await store.release("released-first", b, now=NOON)
        await store.settle("released-first", b, {"tpd": 500}, now=NOON)
        assert await store.usage(b, now=NOON) == {"tpd": 125}

    async def test_buckets_can_be_settled_separately(self, store: StateStore) -> None:
        a, c = bucket("tpd", 1000, 100), bucket("usd_day", 1000, 200)
        assert (await store.reserve("r1", [a, c], TTL, now=NOON)).ok
        await store.settle("r1", [a], {"tpd": 10}, now=NOON)
        assert await store.usage([a, c], now=NOON) == {"tpd": 10, "usd_day": 200}
        await store.release("r1", [a, c], now=NOON)  # a is done already; c is released
        await store.settle("r1", [a, c], {"tpd": 999, "usd_day": 999}, now=NOON)
        assert await store.usage([a, c], now=NOON) == {"tpd": 10, "usd_day": 0}

    async def test_one_reservation_id_across_two_hash_tags(self, store: StateStore) -> None:
        tenant = [bucket("tpd", 100, 60)]
        route = [bucket("route_tpd", 100, 60, tag="r:chat")]
        assert (await store.reserve("r1", tenant, TTL, now=NOON)).ok
        assert (await store.reserve("r1", route, TTL, now=NOON)).ok
        await store.settle("r1", tenant, {"tpd": 5}, now=NOON)
        await store.release("r1", route, now=NOON)
        assert await store.usage(tenant, now=NOON) == {"tpd": 5}
        assert await store.usage(route, now=NOON) == {"route_tpd": 0}

    # -- expiry of crashed reservations --------------------------------------------------------

    async def test_an_abandoned_hold_expires_after_its_ttl(self, store: StateStore) -> None:
        bs = [bucket("tpd", 100, 60), bucket("tpm", 100, 60, period="minute")]
        assert (await store.reserve("crashed", bs, 30, now=NOON)).ok
        assert not (await store.reserve("r2", bs, 30, now=NOON + 29.9)).ok
        assert await store.usage(bs, now=NOON + 29.9) == {"tpd": 60, "tpm": 60}
        assert await store.usage(bs, now=NOON + 30) == {"tpd": 0, "tpm": 0}
        assert (await store.reserve("r2", bs, 30, now=NOON + 30)).ok

    async def test_a_late_settle_after_the_hold_was_purged_is_not_subtracted_twice(self, store: StateStore) -> None:
        b = [bucket("tpd", 1000, 60)]
        assert (await store.reserve("slow", b, 30, now=NOON)).ok
        assert (await store.reserve("other", b, 30, now=NOON + 31)).ok  # purges the expired hold
        await store.settle("slow", b, {"tpd": 50}, now=NOON + 32)
        assert await store.usage(b, now=NOON + 32) == {"tpd": 110}  # other's 60 held + slow's 50 spent
        await store.settle("slow", b, {"tpd": 50}, now=NOON + 33)
        assert await store.usage(b, now=NOON + 33) == {"tpd": 110}

    async def test_a_late_settle_of_an_expired_unpurged_hold_replaces_it(self, store: StateStore) -> None:
        b = [bucket("tpd", 1000, 60)]
        assert (await store.reserve("slow", b, 30, now=NOON)).ok
        await store.settle("slow", b, {"tpd": 50}, now=NOON + 40)
        assert await store.usage(b, now=NOON + 40) == {"tpd": 50}

    async def test_an_id_whose_hold_expired_unsettled_may_reserve_again(self, store: StateStore) -> None:
        b = [bucket("tpd", 100, 60)]
        assert (await store.reserve("r1", b, 30, now=NOON)).ok
        assert (await store.reserve("r1", b, 30, now=NOON + 31)).ok
        assert await store.usage(b, now=NOON + 31) == {"tpd": 60}

    # -- live holds refreshed by their caller -------------------------------------------------

    async def test_a_refreshed_hold_outlives_its_ttl_and_expires_once_no_longer_refreshed(
            self, store: StateStore) -> None:
        bs = [bucket("tpd", 100, 60), bucket("tokens_month", 1000, 60, period="month")]
        assert (await store.reserve("live", bs, 30, now=NOON)).ok
        assert await store.refresh("live", bs, 30, now=NOON + 20)
        assert await store.refresh("live", bs, 30, now=NOON + 40)
        # still held past its first ttl: nothing that would not fit beside it fits
        assert not (await store.reserve("r2", bs, 30, now=NOON + 69.9)).ok
        assert await store.usage(bs, now=NOON + 69.9) == {"tpd": 60, "tokens_month": 60}
        # its process died: nothing refreshes it, and it expires 30 s after the last refresh
        assert await store.usage(bs, now=NOON + 70) == {"tpd": 0, "tokens_month": 0}
        assert not await store.refresh("live", bs, 30, now=NOON + 71)  # expired: not taken again
        assert await store.usage(bs, now=NOON + 71) == {"tpd": 0, "tokens_month": 0}
        assert (await store.reserve("r2", bs, 30, now=NOON + 71)).ok
        await store.settle("live", bs, {"tpd": 20, "tokens_month": 20}, now=NOON + 72)  # a late settle counts
        assert await store.usage(bs, now=NOON + 72) == {"tpd": 80, "tokens_month": 80}

    async def test_a_refresh_never_shortens_a_hold(self, store: StateStore) -> None:
        b = [bucket("tpd", 100, 60)]
        assert (await store.reserve("r1", b, 60, now=NOON)).ok
        assert await store.refresh("r1", b, 10, now=NOON + 1)  # live, and it keeps its later expiry
        assert await store.usage(b, now=NOON + 59.9) == {"tpd": 60}
        assert await store.usage(b, now=NOON + 60) == {"tpd": 0}

    async def test_only_a_live_hold_is_refreshed(self, store: StateStore) -> None:
        b = [bucket("tpd", 100, 30)]
        assert not await store.refresh("unknown", b, 30, now=NOON)
        for rid in ("settled", "released"):
            assert (await store.reserve(rid, b, 30, now=NOON)).ok
        await store.settle("settled", b, {"tpd": 10}, now=NOON + 1)
        await store.release("released", b, now=NOON + 1)
        assert not await store.refresh("settled", b, 30, now=NOON + 2)
        assert not await store.refresh("released", b, 30, now=NOON + 2)
        assert await store.usage(b, now=NOON + 2) == {"tpd": 10}
        assert await store.refresh("x", [], 30, now=NOON) is False
        with pytest.raises(ValueError):
            await store.refresh("settled", b, 0, now=NOON)

    async def test_a_hold_made_before_midnight_is_refreshed_after_it(self, store: StateStore) -> None:
        bs = [bucket("tpd", 100, 40)]
        before = ts(2026, 11, 15, 23, 59, 50)
        assert (await store.reserve("r1", bs, 30, now=before)).ok
        assert await store.refresh("r1", bs, 30, now=before + 20)  # a new day: the hold sits in the old one
        assert await store.usage(bs, now=before + 45) == {"tpd": 0}
        assert await store.usage(bs, now=ts(2026, 11, 15, 23, 59, 59)) == {"tpd": 40}
        await store.settle("r1", bs, {"tpd": 25}, now=before + 45)
        assert await store.usage(bs, now=ts(2026, 11, 15, 23, 59, 59)) == {"tpd": 25}

    # -- periods -------------------------------------------------------------------------------

    async def test_a_hold_made_before_midnight_settles_into_the_old_day(self, store: StateStore) -> None:
        bs = [bucket("tpd", 100, 40), bucket("tokens_month", 1000, 40, period="month")]
        before, after = ts(2026, 11, 15, 23, 59, 30), ts(2026, 11, 16, 0, 0, 30)
        assert (await store.reserve("r1", bs, 300, now=before)).ok
        await store.settle("r1", bs, {"tpd": 25, "tokens_month": 25}, now=after)
        assert await store.usage(bs, now=after) == {"tpd": 0, "tokens_month": 25}  # a new day, the same month
        assert await store.usage(bs, now=ts(2026, 11, 15, 23, 59, 59)) == {"tpd": 25, "tokens_month": 25}
        d = await store.reserve("r2", with_amount(bs, 100), 300, now=after)
        assert d.ok and d.remaining == {"tpd": 0, "tokens_month": 875}

    async def test_a_hold_made_before_the_month_ends_settles_into_the_old_month(self, store: StateStore) -> None:
        bs = [bucket("tpd", 100, 40), bucket("tokens_month", 1000, 40, period="month")]
        before, after = ts(2026, 12, 31, 23, 59, 59), ts(2027, 1, 1, 0, 1)
        assert (await store.reserve("r1", bs, 300, now=before)).ok
        d = await store.reserve("r2", bs, 300, now=after)
        assert d.ok and d.remaining == {"tpd": 60, "tokens_month": 960}  # January starts empty
        await store.settle("r1", bs, {"tpd": 30, "tokens_month": 30}, now=after)
        assert await store.usage(bs, now=after) == {"tpd": 40, "tokens_month": 40}
        assert await store.usage(bs, now=before) == {"tpd": 30, "tokens_month": 30}

    async def test_period_retry_after_and_reset_point_at_the_rollover(self, store: StateStore) -> None:
        at = ts(2026, 2, 27, 18)  # 2026 is not a leap year: March starts in 30 h
        day, month = bucket("tpd", 10, 10), bucket("tokens_month", 10, 10, period="month")
        assert (await store.reserve("r1", [day, month], TTL, now=at)).ok
        d = await store.reserve("r2", [day, month], TTL, now=at)
        assert d.failed == day and d.retry_after_s == pytest.approx(6 * 3600)
        assert d.reset_s == pytest.approx({"tpd": 6 * 3600, "tokens_month": 30 * 3600})
        d = await store.reserve("r3", [month], TTL, now=at)
        assert d.failed == month and d.retry_after_s == pytest.approx(30 * 3600)
        assert (await store.reserve("r4", [day], TTL, now=ts(2026, 2, 28))).ok
        assert (await store.reserve("r5", [month], TTL, now=ts(2026, 3, 1))).ok

    async def test_a_settle_after_the_record_is_gone_counts_in_the_current_period(self, store: StateStore) -> None:
        b = [bucket("tpd", 1000, 100)]
        within, beyond = ts(2026, 11, 15, 23, 30), ts(2026, 11, 15, 23)
        assert (await store.reserve("within", b, 10, now=within)).ok
        assert (await store.reserve("beyond", b, 10, now=beyond)).ok
        later = ts(2026, 11, 16, 0, 10)
        assert later - beyond > 10 + DEFAULT_SETTLE_GRACE_S > later - within
        await store.settle("within", b, {"tpd": 7}, now=later)  # the record says: November 15
        await store.settle("beyond", b, {"tpd": 9}, now=later)  # no record any more: now
        assert await store.usage(b, now=later) == {"tpd": 9}
        assert await store.usage(b, now=ts(2026, 11, 15, 23, 59)) == {"tpd": 7}

    # -- sliding windows -----------------------------------------------------------------------

    async def test_the_previous_minute_is_weighted_by_what_is_left_of_this_one(self, store: StateStore) -> None:
        b = [bucket("tpm", 10, 8, period="minute")]
        assert (await store.reserve("r1", b, TTL, now=NOON + 5)).ok
        await store.settle("r1", b, {}, now=NOON + 6)
        assert await store.usage(b, now=NOON + 59) == {"tpm": 8}
        # 15 s into the next minute the previous one weighs 45/60: 8 * 0.75 = 6.
        assert await store.usage(b, now=NOON + 75) == {"tpm": 6}
        d = await store.reserve("r2", with_amount(b, 3), TTL, now=NOON + 75)
        assert d.ok and d.remaining == {"tpm": 1} and d.reset_s == {"tpm": pytest.approx(45)}
        d = await store.reserve("r3", with_amount(b, 2), TTL, now=NOON + 75)
        assert not d.ok
        # Room once 8 * rem/60 + 3 + 2 <= 10, rem <= 37.5 s: 22.5 s into the minute, 7.5 s from now.
        assert d.retry_after_s == pytest.approx(7.5)
        assert not (await store.reserve("r3", with_amount(b, 2), TTL, now=NOON + 82.4)).ok
        assert (await store.reserve("r3", with_amount(b, 2), TTL, now=NOON + 82.5)).ok
        assert await store.usage(b, now=NOON + 120) == {"tpm": 5}  # r2 + r3, now the previous minute, weight 1
        assert await store.usage(b, now=NOON + 180) == {"tpm": 0}

    async def test_window_retry_after_when_this_minute_alone_is_full(self, store: StateStore) -> None:
        b = [bucket("tpm", 10, 6, period="minute")]
        assert (await store.reserve("r1", b, TTL, now=NOON)).ok
        await store.settle("r1", b, {}, now=NOON + 1)  # settled, so its 6 stay counted after the hold's ttl
        d = await store.reserve("r2", with_amount(b, 5), TTL, now=NOON + 10)
        # Next minute, 6 * rem/60 + 5 <= 10 once rem <= 50 s: 10 s into it, 60 s from now.
        assert not d.ok and d.retry_after_s == pytest.approx(60)
        assert d.remaining == {"tpm": 4} and d.reset_s == {"tpm": pytest.approx(50)}
        assert not (await store.reserve("r2", with_amount(b, 5), TTL, now=NOON + 69.9)).ok
        assert (await store.reserve("r2", with_amount(b, 5), TTL, now=NOON + 70)).ok

    async def test_window_retry_after_has_a_floor(self, store: StateStore) -> None:
        b = [bucket("rpm", 2, 1, period="minute")]
        for i in range(2):
            assert (await store.reserve(f"r{i}", b, TTL, now=NOON + 30)).ok
        # Next minute the previous two weigh 2 * rem/60: one more fits once rem <= 30 s.
        d = await store.reserve("r2", b, TTL, now=NOON + 89.99)
        assert not d.ok and d.retry_after_s == pytest.approx(MIN_RETRY_AFTER_S)

    async def test_a_window_hold_settles_into_the_minute_it_was_made_in(self, store: StateStore) -> None:
        b = [bucket("tpm", 1000, 100, period="minute")]
        assert (await store.reserve("r1", b, TTL, now=NOON + 59)).ok
        await store.settle("r1", b, {"tpm": 30}, now=NOON + 61)
        assert await store.usage(b, now=NOON + 90) == {"tpm": 15}  # previous minute at weight 1/2
        assert (await store.reserve("r2", b, 300, now=NOON + 70)).ok
        # Settled two minutes later: the minute it counted in has left the window.
        await store.settle("r2", b, {"tpm": 80}, now=NOON + 190)
        assert await store.usage(b, now=NOON + 190) == {"tpm": 0}

    # -- validation ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("buckets", "match"),
        [
            ([bucket("a", 1, 1), bucket("b", 1, 1, tag="t:other")], "share a hash_tag"),
            ([bucket("a", 1, 1, tag="")], "hash_tag"),
            ([bucket("a", 1, 1, tag="t:{x}")], "hash_tag"),
            ([bucket("a", 1, 1), bucket("a", 1, 1)], "unique"),
            ([Bucket("k1", "t:a", 1, "window", "day", 1, "n")], "minute"),
            ([Bucket("k1", "t:a", 1, "period", "minute", 1, "n")], "'day' or 'month'"),
            ([Bucket("k1", "t:a", 1, "gauge", "day", 1, "n")], "kind"),  # type: ignore[arg-type]
            ([Bucket("~k", "t:a", 1, "period", "day", 1, "n")], "key"),
            ([bucket("a", -1, 1)], "limit"),
            ([bucket("a", 1, -1)], "amount"),
            ([bucket("a", 1, True)], "amount"),
            ([bucket("a", 2**40, 1, period="minute")], "limit"),
        ],
    )
    async def test_bad_buckets_raise_value_error(self, store: StateStore, buckets: list[Bucket], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            await store.reserve("r1", buckets, TTL, now=NOON)
        with pytest.raises(ValueError, match=match):
            await store.settle("r1", buckets, {}, now=NOON)
        with pytest.raises(ValueError, match=match):
            await store.usage(buckets, now=NOON)

    async def test_bad_arguments_raise_value_error(self, store: StateStore) -> None:
        b = [bucket("tpd", 10, 1)]
        with pytest.raises(ValueError, match="ttl_s"):
            await store.reserve("r1", b, 0, now=NOON)
        with pytest.raises(ValueError, match="reservation_id"):
            await store.reserve("", b, TTL, now=NOON)
        with pytest.raises(ValueError, match="actual"):
            await store.settle("r1", b, {"tpd": -1}, now=NOON)
        assert await store.usage(b, now=NOON) == {"tpd": 0}
