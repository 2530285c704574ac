"""The ledger becoming unreachable: ping says so, store calls raise LedgerUnavailable, the key
cache keeps authenticating, and everything recovers when the database is back."""

import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway.store.keys import KeyCache, KeyStore
from gateway.store.ledger import Ledger, LedgerUnavailable
from tests.support.pg import fresh_postgres_url, require_postgres
from tests.support.tcpproxy import TcpProxy, ThreadedTcpProxy


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require_postgres()
    async with fresh_postgres_url() as url:
        yield url


async def _store_calls_fail(store: KeyStore, key_id: str) -> None:
    calls = [
        lambda: store.create("acme"),
        lambda: store.list(),
        lambda: store.revoke(key_id),
        lambda: store.active_hashes(),
        lambda: store.count_active(),
    ]
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable) as info:
            await call()
        assert time.monotonic() - t0 < 3.0, "a dead ledger must fail fast"
        assert "postgresql" in str(info.value)


async def test_cut_and_restore_through_a_proxy(pg_url):
    async with TcpProxy("127.0.0.1", urlsplit(pg_url).port or 5432) as proxy:
        ledger = Ledger.from_url(_via(pg_url, proxy.port))
        try:
            await ledger.migrate()
            store = KeyStore(ledger)
            rec, key = await store.create("acme")
            cache = KeyCache(store)
            await cache.refresh()
            assert await ledger.ping()

            await proxy.cut()
            t0 = time.monotonic()
            assert await ledger.ping(timeout_s=1.0) is False
            assert time.monotonic() - t0 < 1.5
            await _store_calls_fail(store, rec.id)
            with pytest.raises(LedgerUnavailable):
                await cache.refresh()
            assert cache.lookup(key) == rec  # authentication goes on from memory
            assert await cache.lookup_or_refresh(key) == rec
            assert await cache.lookup_or_refresh("gw-unknown") is None
            assert await ledger.ping() is False

            await proxy.restore()
            assert await ledger.ping() is True
            assert await store.count_active() == 1
            await cache.refresh()
            assert cache.last_refresh_ok is True
        finally:
            await ledger.aclose()


async def test_threaded_proxy_cuts_a_ledger_from_another_thread(pg_url):
    with ThreadedTcpProxy("127.0.0.1", urlsplit(pg_url).port or 5432) as proxy:
        ledger = Ledger.from_url(_via(pg_url, proxy.port))
        try:
            await ledger.migrate()
            assert await ledger.ping()
            proxy.cut()
            assert await ledger.ping() is False
            with pytest.raises(LedgerUnavailable):
                await KeyStore(ledger).count_active()
            proxy.restore()
            assert await ledger.ping() is True
            assert await KeyStore(ledger).count_active() == 0
        finally:
            await ledger.aclose()


async def test_sqlite_file_that_cannot_be_opened(tmp_path):
    path = tmp_path / "ledger.db"
    path.mkdir()  # a directory where the database file should be
    ledger = Ledger.from_url(f"sqlite:///{path}")
    try:
        assert await ledger.ping() is False
        with pytest.raises(LedgerUnavailable, match="sqlite"):
            await ledger.migrate()
        with pytest.raises(LedgerUnavailable):
            await KeyStore(ledger).count_active()
        path.rmdir()
        assert await ledger.ping() is True
        await ledger.migrate()
        assert await KeyStore(ledger).count_active() == 0
    finally:
        await ledger.aclose()
