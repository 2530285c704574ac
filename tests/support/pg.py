"""Throwaway PostgreSQL databases for tests, on the shared server at 127.0.0.1:5432.

Each test gets its own database, so tests never see each other's rows and need no cleanup
order. PostgreSQL being down is a failure with instructions, never a silent skip: the suite
promises to test both ledger back ends.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

HOST = os.environ.get("GATEWAY_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("GATEWAY_TEST_PG_PORT", "5432"))
USER = os.environ.get("GATEWAY_TEST_PG_USER", "postgres")
ADMIN_DB = os.environ.get("GATEWAY_TEST_PG_DB", "test")

START_HINT = (
    f"PostgreSQL is not reachable at {USER}@{HOST}:{PORT}/{ADMIN_DB}; the ledger tests need it. "
    "Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


def postgres_url(database: str, host: str = HOST, port: int = PORT) -> str:
    return f"postgresql://{USER}@{host}:{port}/{database}"


def postgres_available(timeout_s: float = 1.0) -> bool:
    """True if something accepts TCP connections on the PostgreSQL port (sync, loop-agnostic)."""
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    if not postgres_available():
        pytest.fail(START_HINT, pytrace=False)


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(host=HOST, port=PORT, user=USER, database=ADMIN_DB, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        pytest.fail(f"{START_HINT} ({type(e).__name__}: {e})", pytrace=False)


async def create_database() -> str:
    """Create an empty database gw_test_<hex> and return its name."""
    name = f"gw_test_{secrets.token_hex(6)}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    """Drop a database made by create_database(), disconnecting whoever is still in it."""
    if not name.startswith("gw_test_"):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    conn = await _admin()
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_postgres_url() -> AsyncIterator[str]:
    """`async with fresh_postgres_url() as url:` a new empty database, dropped afterwards."""
    name = await create_database()
    try:
        yield postgres_url(name)
    finally:
        await drop_database(name)
