"""The ledger plane: one SQLAlchemy async engine over SQLite (default) or PostgreSQL.

Callers use Core statements inside `ledger.read()` / `ledger.write()`; every driver failure
(refused connection, timeout, locked file, broken socket) comes out as `LedgerUnavailable`, so
the rest of the gateway handles one exception type and never imports a driver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import event, exc, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.store.sqlite_writer import SqliteWriter, apply_connection_pragmas

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("gateway.store.ledger")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# SQLite: writers wait this long for the file lock instead of failing at once.
# PostgreSQL: small timeouts so a dead database fails a request in seconds, not minutes.
PG_CONNECT_TIMEOUT_S = 3.0
PG_COMMAND_TIMEOUT_S = 10.0
PG_POOL_SIZE = 5
PG_MAX_OVERFLOW = 5
PG_POOL_TIMEOUT_S = 5.0
# Any constant works; it only has to be the same in every replica that migrates the database.
_PG_MIGRATION_LOCK = 0x6761_7465_7761_79  # "gateway"

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (exc.DBAPIError, exc.TimeoutError, exc.DisconnectionError, OSError)


class LedgerUnavailable(Exception):
    """The ledger database could not be reached or refused the operation."""


def _describe(e: BaseException) -> str:
    # The driver's own message, not SQLAlchemy's str(): that one appends SQL and parameters.
    orig = getattr(e, "orig", None) or e
    msg = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {msg[:200]}" if msg else type(orig).__name__


def async_url(url: str) -> URL:
    """Map the config's URL to the async driver SQLAlchemy should use."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return u.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported ledger URL scheme '{u.drivername}' (use sqlite:/// or postgresql://)")


# The newest migration. Start-up compares it with the database's and imports alembic (and mako,
# ~11 MB that would stay in every worker) only when there is something to migrate; a test keeps
# it equal to the migrations' head.
HEAD_REVISION = "0003"


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic Config without alembic.ini: the migrations ship inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade_head(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def _at_head(connection: Connection) -> bool:
    if not inspect(connection).has_table("alembic_version"):
        return False
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION


def _sqlite_file(u: URL) -> Path | None:
    db = u.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or u.query.get("mode") == "memory":
        return None
    return Path(db)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it skips it for SELECT and DDL) so transactions
        # and DDL are really transactional; the "begin" hook below emits it instead.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            apply_connection_pragmas(cur.execute)
        finally:
            cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Write transactions take the lock up front: a deferred one that reads and then writes
        # can fail with SQLITE_BUSY at once (the busy timeout does not apply to lock upgrades).
        conn.exec_driver_sql(conn.get_execution_options().get("gateway_sqlite_begin", "BEGIN"))


def _json_text(value: Any) -> str:
    # orjson instead of SQLAlchemy's default json.dumps: several times faster per envelope.
    return orjson.dumps(value).decode()


class Ledger:
    """One async engine plus the gateway's conventions for using it."""

    def __init__(self, engine: AsyncEngine, sqlite_path: Path | None = None) -> None:
        self._engine = engine
        self._batch_writer = SqliteWriter(sqlite_path) if sqlite_path is not None else None

    @classmethod
    def from_url(cls, url: str, *, echo: bool = False) -> Ledger:
        u = async_url(url)
        if u.get_backend_name() == "sqlite":
            path = _sqlite_file(u)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(u, echo=echo, hide_parameters=True, json_serializer=_json_text)
            _install_sqlite_hooks(engine)
            return cls(engine, path)
        else:
            engine = create_async_engine(
                u,
                echo=echo,
                hide_parameters=True,
                json_serializer=_json_text,
                pool_size=PG_POOL_SIZE,
                max_overflow=PG_MAX_OVERFLOW,
                pool_timeout=PG_POOL_TIMEOUT_S,
                pool_pre_ping=True,
                # Replaces connections before a server or proxy idle timeout kills them.
                pool_recycle=1800,
                connect_args={
                    "timeout": PG_CONNECT_TIMEOUT_S,
                    "command_timeout": PG_COMMAND_TIMEOUT_S,
                    "server_settings": {"application_name": "gateway"},
                },
            )
        return cls(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def backend(self) -> str:
        """The dialect name: sqlite or postgresql."""
        return self._engine.dialect.name

    def __repr__(self) -> str:
        return f"Ledger({self._engine.url.render_as_string(hide_password=True)})"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a read transaction (committed on exit)."""
        try:
            async with self._engine.connect() as conn, conn.begin():
                yield conn
        except _DRIVER_ERRORS as e:
            raise LedgerUnavailable(f"ledger ({self.backend}) unavailable: {_describe(e)}") from e

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction: committed on exit, rolled back on error."""
        try:
            async with self._engine.connect() as conn:
                if self.backend == "sqlite":
                    await conn.execution_options(gateway_sqlite_begin="BEGIN IMMEDIATE")
                async with conn.begin():
                    yield conn
        except _DRIVER_ERRORS as e:
            raise LedgerUnavailable(f"ledger ({self.backend}) unavailable: {_describe(e)}") from e

    async def write_batch(self, statements: Sequence[tuple[str, Any]]) -> None:
        """Driver-level statements (`exec_driver_sql` style, a tuple of parameters each) in one write
        transaction; on a SQLite file the writer thread runs them."""
        if not statements:
            return
        if self._batch_writer is not None:
            try:
                await self._batch_writer.run(statements)
            except (sqlite3.Error, OSError) as e:
                raise LedgerUnavailable(f"ledger (sqlite) unavailable: {_describe(e)}") from e
            return
        async with self.write() as conn:
            for sql, params in statements:
                await conn.exec_driver_sql(sql, params)

    async def migrate(self) -> None:
        """Upgrade the schema to the newest migration; a no-op when it is already there.

        Safe to run from several processes at once: they serialize on a lock (an advisory lock
        on PostgreSQL, the write lock on SQLite) and all but the first find nothing to do.
        """
        if await self.at_head():
            return
        async with self.write() as conn:
            if self.backend == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            await conn.run_sync(_upgrade_head)

    async def at_head(self) -> bool:
        async with self.read() as conn:
            return await conn.run_sync(_at_head)

    async def migrate_isolated(self, url: str) -> None:
        """`migrate()` in a child process (see gateway/store/migrate.py), when there is anything to do."""
        if await self.at_head():
            return
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.store.migrate", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "GATEWAY_LEDGER_URL": url})
        _, err = await proc.communicate()
        if proc.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise LedgerUnavailable(f"ledger ({self.backend}) migration failed: {reason[0]}")

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """True when the database answers SELECT 1 within timeout_s; never raises."""
        try:
            async with asyncio.timeout(timeout_s), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception as e:
            log.debug("ledger ping failed: %s", _describe(e))
            return False

    async def release_connections(self) -> None:
        """Close every open connection (pooled, and the batch writer's); new ones open on demand."""
        await self._engine.dispose()
        if self._batch_writer is not None:
            await self._batch_writer.reset()

    async def aclose(self) -> None:
        if self._batch_writer is not None:
            await self._batch_writer.aclose()
        await self._engine.dispose()
