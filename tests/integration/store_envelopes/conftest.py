"""Every test here runs on SQLite and on PostgreSQL, with a way to take the database away.

`backend.cut()` makes the ledger unreachable without stopping the shared server: PostgreSQL is
reached through a TcpProxy that drops every connection; the SQLite file is moved aside and a
directory put in its place, so it cannot be opened (a read-only directory would not do: the tests
run as root, which ignores permissions).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway.store.ledger import Ledger
from tests.support.pg import fresh_postgres_url, require_postgres
from tests.support.tcpproxy import TcpProxy


class Backend:
    def __init__(self, name: str, ledger: Ledger, url: str) -> None:
        self.name, self.ledger, self.url = name, ledger, url
        self.proxy: TcpProxy | None = None
        self.db_file: Path | None = None

    async def cut(self) -> None:
        if self.proxy is not None:
            await self.proxy.cut()
            return
        assert self.db_file is not None
        await self.ledger.release_connections()  # open connections would keep the old file open
        aside = self.db_file.parent / "aside"
        aside.mkdir()
        for f in self.db_file.parent.glob(self.db_file.name + "*"):
            shutil.move(f, aside / f.name)
        self.db_file.mkdir()

    async def restore(self) -> None:
        if self.proxy is not None:
            await self.proxy.restore()
            return
        assert self.db_file is not None
        self.db_file.rmdir()
        aside = self.db_file.parent / "aside"
        for f in aside.iterdir():
            shutil.move(f, self.db_file.parent / f.name)
        aside.rmdir()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        db = tmp_path / "ledger" / "ledger.db"
        url = f"sqlite:///{db}"
        lg = Ledger.from_url(url)
        b = Backend("sqlite", lg, url)
        b.db_file = db
        try:
            await lg.migrate()
            yield b
        finally:
            await lg.aclose()
        return
    require_postgres()
    async with fresh_postgres_url() as url, TcpProxy("127.0.0.1", urlsplit(url).port or 5432) as proxy:
        lg = Ledger.from_url(_via(url, proxy.port))
        b = Backend("postgresql", lg, url)
        b.proxy = proxy
        try:
            await lg.migrate()
            yield b
        finally:
            await lg.aclose()


@pytest.fixture
def ledger(backend: Backend) -> Ledger:
    return backend.ledger


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"
