"""The state stores' behaviour on memory and on real Redis, then what only concurrency and a real server show."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.store.state.base import StateStore, StateUnavailable
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.periods import DEFAULT_DONE_TTL_S
from gateway.store.state.redis import RedisStateStore
from tests.integration.store_state.conftest import REDIS_URL, RedisFactory
from tests.support.tcpproxy import TcpProxy
from tests.unit.store_state.behaviour import NOON, TTL, StateStoreBehaviour, bucket, with_amount


class TestBothBackends(StateStoreBehaviour):
    pass


# -- concurrency ---------------------------------------------------------------------------------

TENANT = [
    bucket("tpd", 700, 7),
    bucket("usd_month", 10**15, 10**9, period="month"),
    bucket("rpm", 10**6, 1, period="minute"),
    bucket("tpm", 10**6, 7, period="minute"),
]


async def _burst(stores: list[StateStore], n: int, buckets: list, *, now: float = NOON) -> list[bool]:
    tasks = [stores[i % len(stores)].reserve(f"r{i}", buckets, TTL, now=now) for i in range(n)]
    return [d.ok for d in await asyncio.gather(*tasks)]


async def test_500_concurrent_reserves_admit_exactly_as_many_as_fit(store: StateStore) -> None:
    oks = await _burst([store], 500, TENANT)
    assert sum(oks) == 100  # 700 tokens a day at 7 each
    usage = await store.usage(TENANT, now=NOON)
    assert usage["tpd"] == 700 and usage["rpm"] == 100


async def test_500_concurrent_reserves_against_a_window(store: StateStore) -> None:
    b = [bucket("tpd", 10**6, 3), bucket("rpm", 137, 1, period="minute")]
    assert sum(await _burst([store], 500, b, now=NOON + 1)) == 137


async def test_two_processes_on_one_redis_admit_exactly_as_many_as_fit(make_redis_store: RedisFactory) -> None:
    a, b = await make_redis_store(), await make_redis_store()
    oks = await _burst([a, b], 500, TENANT)
    assert sum(oks) == 100
    assert sum(oks[0::2]) > 0 and sum(oks[1::2]) > 0  # both processes got some
    assert (await a.usage(TENANT, now=NOON))["tpd"] == 700


async def test_settle_under_concurrency_keeps_exact_totals(store: StateStore) -> None:
    rng = random.Random(7)
    b = [bucket("tpd", 10**7, 1000), bucket("tpm", 10**7, 1000, period="minute")]
    assert all(await _burst([store], 300, b, now=NOON))
    actual = {f"r{i}": rng.randrange(0, 2000) for i in range(300)}
    # Settles of the 300 interleave with 200 new reserves, and 50 of them are settled twice.
    ops: list[Coroutine[Any, Any, object]] = [
        store.settle(rid, b, {"tpd": v, "tpm": v}, now=NOON + 1) for rid, v in actual.items()
    ]
    ops += [store.reserve(f"n{i}", b, TTL, now=NOON + 1) for i in range(200)]
    ops += [store.settle(rid, b, {"tpd": v, "tpm": v}, now=NOON + 1) for rid, v in list(actual.items())[:50]]
    # 50 more, each on its own counter, get a release racing their settle: whichever runs first wins.
    race = {f"x{i}": [bucket(f"race{i}", 10**6, 1000)] for i in range(50)}
    for rid, rb in race.items():
        assert (await store.reserve(rid, rb, TTL, now=NOON)).ok
    ops += [store.settle(rid, rb, {rb[0].name: 7}, now=NOON + 1) for rid, rb in race.items()]
    ops += [store.release(rid, rb, now=NOON + 1) for rid, rb in race.items()]
    rng.shuffle(ops)
    await asyncio.gather(*ops)
    total = sum(actual.values())
    assert await store.usage(b, now=NOON + 1) == {"tpd": total + 200_000, "tpm": total + 200_000}
    for rb in race.values():
        assert (await store.usage(rb, now=NOON + 1))[rb[0].name] in (0, 7)
    await asyncio.gather(*(store.release(f"n{i}", b, now=NOON + 2) for i in range(200)))
    assert await store.usage(b, now=NOON + 2) == {"tpd": total, "tpm": total}


async def test_no_interleaving_spends_past_the_limit(store: StateStore) -> None:
    rng = random.Random(11)
    limit = 5000
    b = [bucket("tpd", limit, 0)]
    spent: list[int] = []

    async def request(i: int) -> None:
        want = rng.randrange(1, 200)
        d = await store.reserve(f"q{i}", with_amount(b, want), TTL, now=NOON)
        if not d.ok:
            return
        await asyncio.sleep(0)
        used = rng.randrange(0, want + 1)  # a provider never exceeds the max_tokens it was given
        if used:
            await store.settle(f"q{i}", b, {"tpd": used}, now=NOON)
            spent.append(used)
        else:
            await store.release(f"q{i}", b, now=NOON)

    await asyncio.gather(*(request(i) for i in range(500)))
    assert (await store.usage(b, now=NOON))["tpd"] == sum(spent) <= limit


# -- Redis specifics -----------------------------------------------------------------------------


async def test_every_key_of_a_call_is_in_one_cluster_slot_and_expires(
    make_redis_store: RedisFactory, redis_prefix: str
) -> None:
    store = await make_redis_store()
    assert (await store.reserve("r1", TENANT, TTL, now=NOON)).ok
    await store.settle("r1", TENANT, {"tpd": 3}, now=NOON)
    assert (await store.reserve("r2", TENANT, TTL, now=NOON)).ok
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=f"{redis_prefix}*")]
        assert keys and all("{t:acme}" in k for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1
        for k in keys:
            assert await client.pttl(k) > 0, k  # nothing is left to live forever
        day = [k for k in keys if ":tenant:acme:tpd:" in k and not k.endswith(":z")]
        assert day == [f"{redis_prefix}{{t:acme}}:c:tenant:acme:tpd:20261115"]
        assert await client.get(day[0]) == b"10"  # r1 settled at 3, r2 holding 7
    finally:
        await client.aclose()


async def test_two_processes_share_reservations_settle_from_the_other(make_redis_store: RedisFactory) -> None:
    a, b = await make_redis_store(), await make_redis_store()
    bs = [bucket("tpd", 100, 60)]
    assert (await a.reserve("r1", bs, TTL, now=NOON)).ok
    assert not (await b.reserve("r2", bs, TTL, now=NOON)).ok
    await b.settle("r1", bs, {"tpd": 10}, now=NOON)
    assert (await b.reserve("r2", bs, TTL, now=NOON)).ok
    assert await a.usage(bs, now=NOON) == {"tpd": 70}


async def test_scripts_are_reloaded_after_script_flush(make_redis_store: RedisFactory) -> None:
    store = await make_redis_store()
    bs = [bucket("tpd", 100, 10)]
    assert (await store.reserve("r1", bs, TTL, now=NOON)).ok
    client = Redis.from_url(REDIS_URL)
    try:
        await client.script_flush()  # as a restarted or failed-over Redis would have no scripts
    finally:
        await client.aclose()
    assert (await store.reserve("r2", bs, TTL, now=NOON)).ok
    await store.settle("r1", bs, {}, now=NOON)
    assert await store.usage(bs, now=NOON) == {"tpd": 20}


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_redis_raises_state_unavailable_quickly() -> None:
    store = RedisStateStore(f"redis://127.0.0.1:{_closed_port()}/0")
    bs = [bucket("tpd", 100, 10)]
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="unavailable"):
            await store.reserve("r1", bs, TTL)
        with pytest.raises(StateUnavailable):
            await store.settle("r1", bs, {"tpd": 1})
        with pytest.raises(StateUnavailable):
            await store.release("r1", bs)
        with pytest.raises(StateUnavailable):
            await store.usage(bs)
        assert await store.ping() is False
        assert time.monotonic() - started < 3.0
        with pytest.raises(ValueError):  # bad input is still a ValueError, checked before any I/O
            await store.reserve("r1", [bucket("a", 1, 1), bucket("b", 1, 1, tag="t:x")], TTL)
    finally:
        await store.aclose()


async def test_a_cut_connection_surfaces_and_the_store_recovers(redis_prefix: str) -> None:
    from tests.integration.store_state.conftest import REDIS_HOST, REDIS_PORT

    proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
    await proxy.start()
    store = RedisStateStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_prefix)
    bs = [bucket("tpd", 100, 10)]
    try:
        assert (await store.reserve("r1", bs, TTL, now=NOON)).ok
        assert await store.ping()
        await proxy.cut()
        with pytest.raises(StateUnavailable):
            await store.reserve("r2", bs, TTL, now=NOON)
        assert await store.ping() is False
        await proxy.restore()
        # The pooled socket died with the cut; the first call after reconnects (one retry).
        assert (await store.reserve("r2", bs, TTL, now=NOON)).ok
        assert await store.usage(bs, now=NOON) == {"tpd": 20}
    finally:
        await store.aclose()
        await proxy.stop()


async def test_a_stalled_redis_times_out_as_state_unavailable(redis_prefix: str) -> None:
    # A server that accepts and never answers: the read timeout has to fire.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStateStore(f"redis://127.0.0.1:{port}/0", prefix=redis_prefix, timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="Timeout"):
            await store.reserve("r1", [bucket("tpd", 100, 10)], TTL)
        assert time.monotonic() - started < 2.0
    finally:
        await store.aclose()
        server.close()
        await server.wait_closed()


async def test_memory_and_redis_return_identical_decisions(make_redis_store: RedisFactory) -> None:
    """A random workload with a moving clock, played on both: every decision and usage must match."""
    rng = random.Random(3)
    mem, red = MemoryStateStore(done_ttl_s=DEFAULT_DONE_TTL_S), await make_redis_store()
    b = [
        bucket("tpd", 5000, 0),
        bucket("usd_month", 9 * 10**15, 0, period="month"),
        bucket("rpm", 40, 0, period="minute"),
        bucket("tpm", 3000, 0, period="minute"),
    ]
    now = NOON - 30
    live: list[str] = []
    for i in range(400):
        now += rng.choice((0.0, 0.25, 1.5, 7.0, 31.0))
        op = rng.random()
        if op < 0.55 or not live:
            tokens = rng.randrange(0, 400)
            amounts = [tokens, tokens * 10**11 + rng.randrange(10**6), 1, tokens]
            bs = [with_amount([x], a)[0] for x, a in zip(b, amounts, strict=True)]
            ttl = rng.choice((5.0, 60.0))
            got = [await s.reserve(f"w{i}", bs, ttl, now=now) for s in (mem, red)]
            assert got[0] == got[1], (i, got)
            if got[0].ok:
                live.append(f"w{i}")
        elif op < 0.85:
            rid = live.pop(rng.randrange(len(live)))
            actual = {"tpd": rng.randrange(0, 500)} if rng.random() < 0.8 else {}
            for s in (mem, red):
                await s.settle(rid, b, actual, now=now)
        else:
            rid = live.pop(rng.randrange(len(live)))
            for s in (mem, red):
                await s.release(rid, b, now=now)
        assert await mem.usage(b, now=now) == await red.usage(b, now=now), i
