"""Counter names, expiry and window arithmetic shared by the back ends, and the URL factory."""

import pytest

from gateway.store.state.base import state_store_from_url
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.periods import (
    KEY_SLACK_S,
    PERIOD_KEEP_S,
    WINDOW_MS,
    fits,
    remaining,
    slot,
    slots_of,
    used,
)
from gateway.store.state.redis import RedisStateStore
from tests.unit.store_state.behaviour import bucket, ts

DAY, MONTH, MINUTE = bucket("d", 10, 1), bucket("m", 10, 1, period="month"), bucket("w", 10, 1, period="minute")


@pytest.mark.parametrize(
    ("at", "stamp", "prev", "reset_s"),
    [
        (ts(2026, 11, 30, 23, 59, 59), "20261130", "20261129", 1),
        (ts(2026, 12, 1), "20261201", "20261130", 86400),
        (ts(2027, 1, 1, 0, 0, 1), "20270101", "20261231", 86399),
        (ts(2028, 2, 29, 12), "20280229", "20280228", 43200),
    ],
)
def test_day_slots(at: float, stamp: str, prev: str, reset_s: float) -> None:
    s = slot(DAY, at)
    assert (s.stamp, s.prev_stamp, s.rem_ms) == (stamp, prev, 0)
    assert s.reset_s == pytest.approx(reset_s)
    assert s.expires_at == pytest.approx(at + reset_s + PERIOD_KEEP_S)
    assert s.prev_expires_at == pytest.approx(at + reset_s - 86400 + PERIOD_KEEP_S)


@pytest.mark.parametrize(
    ("at", "stamp", "prev", "end"),
    [
        (ts(2026, 11, 30, 23, 59, 59), "202611", "202610", ts(2026, 12, 1)),
        (ts(2026, 12, 31, 12), "202612", "202611", ts(2027, 1, 1)),
        (ts(2027, 1, 1), "202701", "202612", ts(2027, 2, 1)),
        (ts(2028, 2, 29, 23), "202802", "202801", ts(2028, 3, 1)),
    ],
)
def test_month_slots(at: float, stamp: str, prev: str, end: float) -> None:
    s = slot(MONTH, at)
    assert (s.stamp, s.prev_stamp) == (stamp, prev)
    assert s.reset_s == pytest.approx(end - at)
    assert s.expires_at == pytest.approx(end + PERIOD_KEEP_S)


def test_window_slots() -> None:
    at = ts(2026, 11, 30, 12) + 15.25
    s = slot(MINUTE, at)
    minute = int(ts(2026, 11, 30, 12) // 60)
    assert (s.stamp, s.prev_stamp) == (str(minute), str(minute - 1))
    assert s.rem_ms == 44_750 and s.reset_s == pytest.approx(44.75)
    assert s.expires_at == pytest.approx((minute + 2) * 60 + KEY_SLACK_S)
    assert slot(MINUTE, minute * 60.0).rem_ms == WINDOW_MS
    assert slot(MINUTE, minute * 60.0 + 59.9999).rem_ms == 1


def test_window_arithmetic_is_exact_integer_math() -> None:
    b = bucket("w", 10, 2, period="minute")
    # prev 8 at weight 30/60 = 4, + cur 4 + 2 = 10: fits exactly; one ms earlier it does not.
    assert fits(b, 4, 8, 30_000) and not fits(b, 4, 8, 30_001)
    assert remaining(b, 4, 8, 30_000, 2) == 0 and remaining(b, 4, 8, 30_000, 0) == 2
    assert used(b, 4, 8, 30_001) == 9  # 8.000133 rounds up
    assert used(b, 4, 8, 30_000) == 8


async def test_state_store_from_url() -> None:
    assert isinstance(state_store_from_url("memory"), MemoryStateStore)
    # Nothing connects until the first call.
    for url in ("redis://127.0.0.1:1/0", "rediss://user:secret@example.invalid:6380/2"):
        store = state_store_from_url(url)
        assert isinstance(store, RedisStateStore)
        assert "secret" not in repr(store)
        await store.aclose()
    store = state_store_from_url("redis://127.0.0.1:1/2?key_prefix=staging:&socket_keepalive=true")
    assert isinstance(store, RedisStateStore) and store.prefix == "staging:"
    kw = store._client.connection_pool.connection_kwargs
    assert "key_prefix" not in kw and kw["db"] == 2 and kw["socket_keepalive"] is True
    await store.aclose()
    with pytest.raises(ValueError, match="unsupported state URL 'mysql'") as info:
        state_store_from_url("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="braces"):
        RedisStateStore("redis://127.0.0.1:1/0", prefix="gw:{x}:")


@pytest.mark.parametrize("at", [ts(2026, 11, 30, 23, 59, 59) + 0.999, ts(2026, 12, 1), ts(2028, 2, 29, 12, 30) + 0.5])
def test_slots_of_is_slot_of_each_bucket(at: float) -> None:
    # One slot per period is shared by the call's buckets: it must be the very slot each would get.
    buckets = [DAY, MINUTE, bucket("d2", 5, 1), MONTH, bucket("w2", 5, 1, period="minute")]
    assert slots_of(buckets, at) == [slot(b, at) for b in buckets]
