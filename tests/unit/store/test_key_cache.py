import asyncio
import logging
from datetime import UTC, datetime

import pytest

from gateway.store.keys import KeyCache, KeyRecord, hash_key, static_key
from gateway.store.ledger import LedgerUnavailable

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(i: str, tenant: str = "acme") -> KeyRecord:
    return KeyRecord(id=f"key_{i}", tenant=tenant, name=None, prefix=f"gw-{i}", created_at=T0)


class FakeSource:
    """Stands in for KeyStore: a dict of plaintext -> record, with call counting and failure."""

    def __init__(self, keys: dict[str, KeyRecord] | None = None) -> None:
        self.keys = dict(keys or {})
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def active_hashes(self) -> dict[str, KeyRecord]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise LedgerUnavailable("ledger (postgresql) unavailable: ConnectionRefusedError")
        return {hash_key(k): r for k, r in self.keys.items()}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_lookup_is_a_pure_memory_read():
    src = FakeSource({"gw-a": rec("a")})
    cache = KeyCache(src)
    assert cache.lookup("gw-a") is None  # nothing loaded yet, and lookup never loads
    await cache.refresh()
    assert cache.lookup("gw-a") == rec("a")
    assert cache.lookup("gw-b") is None
    assert src.calls == 1
    assert len(cache) == 1


async def test_refresh_replaces_the_map_so_revoked_keys_disappear():
    src = FakeSource({"gw-a": rec("a"), "gw-b": rec("b")})
    cache = KeyCache(src)
    await cache.refresh()
    before = cache._map
    del src.keys["gw-a"]
    await cache.refresh()
    assert cache.lookup("gw-a") is None
    assert cache.lookup("gw-b") == rec("b")
    assert before is not cache._map and "gw-a" not in before  # swapped, never mutated
    assert len(before) == 2


async def test_static_keys_are_always_present_and_win_over_the_ledger():
    h, env_rec = static_key("envco", "env-secret-0123456789", "env:ENVCO_KEY")
    src = FakeSource({"gw-a": rec("a")})
    cache = KeyCache(src, static={h: env_rec})
    assert cache.lookup("env-secret-0123456789") == env_rec  # before any refresh
    await cache.refresh()
    assert cache.lookup("env-secret-0123456789") == env_rec
    # The same secret also in the ledger (under another tenant): the environment's record wins.
    src.keys["env-secret-0123456789"] = rec("x", tenant="other")
    await cache.refresh()
    assert cache.lookup("env-secret-0123456789") == env_rec
    src.keys.clear()
    await cache.refresh()
    assert cache.lookup("env-secret-0123456789") == env_rec
    assert cache.lookup("gw-a") is None


async def test_miss_refreshes_so_a_new_key_works_at_once():
    src = FakeSource()
    cache = KeyCache(src, clock=Clock())
    await cache.refresh()
    src.keys["gw-new"] = rec("new")
    assert cache.lookup("gw-new") is None
    assert await cache.lookup_or_refresh("gw-new") == rec("new")
    assert src.calls == 2


async def test_hit_does_not_refresh():
    src = FakeSource({"gw-a": rec("a")})
    clock = Clock()
    cache = KeyCache(src, clock=clock)
    await cache.refresh()
    clock.t += 100
    for _ in range(10):
        assert await cache.lookup_or_refresh("gw-a") == rec("a")
    assert src.calls == 1


async def test_concurrent_misses_share_one_refresh():
    src = FakeSource({"gw-new": rec("new")})
    src.gate = asyncio.Event()
    cache = KeyCache(src, clock=Clock())
    tasks = [asyncio.create_task(cache.lookup_or_refresh(k)) for k in ["gw-new"] * 20 + ["gw-bad"] * 30]
    await asyncio.sleep(0.01)
    assert src.calls == 1
    src.gate.set()
    results = await asyncio.gather(*tasks)
    assert results[:20] == [rec("new")] * 20
    assert results[20:] == [None] * 30
    assert src.calls == 1


async def test_misses_refresh_at_most_once_per_interval():
    src = FakeSource()
    clock = Clock()
    cache = KeyCache(src, clock=clock, min_refresh_interval_s=1.0)
    assert await cache.lookup_or_refresh("gw-bad") is None
    assert src.calls == 1
    for dt in (0.1, 0.5, 0.99):
        clock.t += dt - (clock.t - 1000.0)
        assert await cache.lookup_or_refresh("gw-bad") is None
    assert src.calls == 1
    clock.t = 1001.0
    assert await cache.lookup_or_refresh("gw-bad") is None
    assert src.calls == 2
    # A periodic (or explicit) refresh does not use up the allowance: a key created after it
    # still works on its first use.
    clock.t = 1005.0
    await cache.refresh()
    src.keys["gw-late"] = rec("late")
    assert await cache.lookup_or_refresh("gw-late") == rec("late")
    assert src.calls == 4


async def test_failed_refresh_keeps_the_old_map_and_logs_no_secret(caplog):
    src = FakeSource({"gw-a-secret-value": rec("a")})
    clock = Clock()
    cache = KeyCache(src, clock=clock)
    await cache.refresh()
    assert cache.last_refresh_ok is True
    src.fail = True
    with caplog.at_level(logging.WARNING, logger="gateway.store.keys"), pytest.raises(LedgerUnavailable):
        await cache.refresh()
    assert cache.last_refresh_ok is False
    assert cache.lookup("gw-a-secret-value") == rec("a")
    clock.t += 5
    with caplog.at_level(logging.WARNING, logger="gateway.store.keys"):
        assert await cache.lookup_or_refresh("gw-a-secret-value") == rec("a")  # a hit: no refresh
        assert await cache.lookup_or_refresh("gw-unknown-secret") is None  # a miss: refresh fails quietly
    assert src.calls == 3
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    text = caplog.text
    assert "keeping 1 known keys" in text
    for secret in ("gw-a-secret-value", "gw-unknown-secret", hash_key("gw-a-secret-value")):
        assert secret not in text


async def test_run_refreshes_periodically_and_survives_failures(caplog):
    src = FakeSource({"gw-a": rec("a")})
    cache = KeyCache(src)
    src.fail = True
    task = asyncio.create_task(cache.run(0.01))
    try:
        with caplog.at_level(logging.INFO, logger="gateway.store.keys"):
            for _ in range(200):
                await asyncio.sleep(0.01)
                if src.calls >= 3:
                    break
            assert not task.done()
            assert cache.lookup("gw-a") is None
            src.fail = False
            for _ in range(200):
                await asyncio.sleep(0.01)
                if cache.lookup("gw-a") is not None:
                    break
        assert cache.lookup("gw-a") == rec("a")
        assert "refresh recovered" in caplog.text
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancelled_waiter_does_not_cancel_the_shared_refresh():
    src = FakeSource({"gw-new": rec("new")})
    src.gate = asyncio.Event()
    cache = KeyCache(src, clock=Clock())
    first = asyncio.create_task(cache.lookup_or_refresh("gw-new"))
    second = asyncio.create_task(cache.lookup_or_refresh("gw-new"))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0)
    src.gate.set()
    assert await second == rec("new")
    assert first.cancelled()
    assert src.calls == 1


async def test_cache_without_a_source_serves_static_keys_only():
    h, env_rec = static_key("envco", "env-secret-0123456789", "env:ENVCO_KEY")
    cache = KeyCache(None, static={h: env_rec})
    await cache.refresh()
    assert await cache.lookup_or_refresh("env-secret-0123456789") == env_rec
    assert await cache.lookup_or_refresh("gw-other") is None
