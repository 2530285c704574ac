"""A SQLite ledger's batch writer: a whole transaction in one hop to its own thread.

Through the async engine, every driver call of a transaction (checkout, BEGIN, each statement,
COMMIT, reset) is a round trip between the event loop and aiosqlite's thread; under load each trip
waits a full turn of a busy loop, and a 256-envelope batch took ~300 ms: at ~1,700 requests/s the
envelope queue filled. Here the transaction runs start to finish on one thread with the standard
library's driver, and the loop waits once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SQLITE_BUSY_TIMEOUT_MS = 5_000
# Every connection to a ledger file, the engine's and the writer's: WAL (readers never block the
# writer and vice versa, which several workers need), a busy timeout, and no fsync per commit.
CONNECTION_PRAGMAS = ("PRAGMA journal_mode=WAL", f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
                      "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")


class SqliteWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    async def run(self, statements: Sequence[tuple[str, Any]]) -> None:
        """Execute the statements in one transaction; raises sqlite3.Error as the driver does."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, statements)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=True)
        for pragma in CONNECTION_PRAGMAS:
            conn.execute(pragma)
        # Appends need little cache (ids lead with the time, so inserts land on the right edge of
        # each index); SQLite's 2 MB default is resident memory in every worker.
        conn.execute("PRAGMA cache_size=-512")
        return conn

    def _transaction(self, statements: Sequence[tuple[str, Any]]) -> None:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                if isinstance(params, list):
                    conn.executemany(sql, params)
                else:
                    conn.execute(sql, params)
            conn.execute("COMMIT")
        except (sqlite3.IntegrityError, sqlite3.DataError):
            conn.execute("ROLLBACK")  # the data was refused, the connection is fine
            raise
        except BaseException:
            # The file may be gone, moved or broken: the next batch opens it afresh.
            self._close()
            raise

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def reset(self) -> None:
        """Close the connection; the next batch reopens the file."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
