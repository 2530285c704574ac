"""State store fixtures: `store` runs each test on the memory store and on real Redis.

Redis is the shared server at 127.0.0.1:6379 (GATEWAY_TEST_REDIS_URL overrides). Each test gets
its own key prefix and deletes its keys afterwards. Redis being down fails the test with
instructions, never skips it: the suite promises to test both back ends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from gateway.store.state.base import StateStore
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.periods import DEFAULT_DONE_TTL_S
from gateway.store.state.redis import RedisStateStore

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_u = urlsplit(REDIS_URL)
REDIS_HOST, REDIS_PORT = _u.hostname or "127.0.0.1", _u.port or 6379

START_HINT = (
    f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}; the state store tests need it. Start it with: "
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def require_redis() -> None:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0):
            return
    except OSError as e:
        pytest.fail(f"{START_HINT} ({type(e).__name__}: {e})", pytrace=False)


async def delete_prefix(prefix: str) -> int:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    require_redis()
    prefix = f"gwtest:{os.urandom(6).hex()}:"
    yield prefix
    await delete_prefix(prefix)


RedisFactory = Callable[..., Awaitable[RedisStateStore]]


@pytest.fixture
async def make_redis_store(redis_prefix: str) -> AsyncIterator[RedisFactory]:
    """Stores on the test's prefix: two of them are two pools, as two gateway processes would have."""
    made: list[RedisStateStore] = []

    async def make(**kw: object) -> RedisStateStore:
        store = RedisStateStore(REDIS_URL, prefix=redis_prefix, **kw)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        mem = MemoryStateStore(done_ttl_s=DEFAULT_DONE_TTL_S)  # the same window as Redis, to compare like for like
        yield mem
        await mem.aclose()
        return
    require_redis()
    prefix = f"gwtest:{os.urandom(6).hex()}:"
    red = RedisStateStore(REDIS_URL, prefix=prefix)
    try:
        yield red
    finally:
        await red.aclose()
        await delete_prefix(prefix)
