"""Integration-wide ledger fixtures: every test using `ledger_url` or `ledger` runs on SQLite and on PostgreSQL."""

from collections.abc import AsyncIterator

import pytest

from gateway.store.ledger import Ledger
from tests.support.pg import fresh_postgres_url, require_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger/ledger.db"
        return
    require_postgres()
    async with fresh_postgres_url() as url:
        yield url


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    lg = Ledger.from_url(ledger_url)
    await lg.migrate()
    try:
        yield lg
    finally:
        await lg.aclose()
