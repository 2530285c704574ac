"""Cost reports run against SQLite and PostgreSQL ledgers, filled through the real EnvelopeWriter."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.ledger import Ledger
from tests.support.pg import fresh_postgres_url, require_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        lg = Ledger.from_url(f"sqlite:///{tmp_path}/ledger/ledger.db")
        try:
            await lg.migrate()
            yield lg
        finally:
            await lg.aclose()
        return
    require_postgres()
    async with fresh_postgres_url() as url:
        lg = Ledger.from_url(url)
        try:
            await lg.migrate()
            yield lg
        finally:
            await lg.aclose()
