"""A SQLite ledger's envelope inserts, on their own thread, paced so they never run in long bursts.

Each statement inserts a few rows (see `envelope_rows.batch_statements`), a batch is one
transaction, and SQLite spends ~10 us of CPU per row on it, mostly without the GIL. The pacing
matters more than the thread: on a machine with few cores, a long burst of CPU beside the event
loop delays the request path even from a lower-priority process (measured on 2 cores: a 15 ms
burst every 100 ms put the p99 at one connection from 0.9 to 4.5 ms, whatever ran it). So after
each statement the thread rests as long as it ran, less what it already waited: behind a busy
event loop, taking the GIL back after a statement can take the interpreter's whole switch interval
(5 ms), and resting on top of that starved the writer (the envelope queue filled at ~2,600
requests/s).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SQLITE_BUSY_TIMEOUT_MS = 5_000
# Every connection to a ledger file, the engine's and the writer's: WAL (readers never block the
# writer and vice versa, which several workers need), a busy timeout, and no fsync per commit.
CONNECTION_PRAGMAS = ("PRAGMA journal_mode=WAL", f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
                      "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")
# A rest never longer than this: a statement slowed by a lock wait must not stall the next one.
_MAX_REST_S = 0.005
_LOCKED_RETRY_S = 0.01


def apply_connection_pragmas(execute: Callable[[str], object]) -> None:
    """CONNECTION_PRAGMAS through `execute`. Switching a fresh file to WAL needs it to itself, and
    SQLite answers "database is locked" at once, without its busy handler, when another connection
    (a worker migrating at start-up) holds it: that pragma is retried until the busy timeout."""
    for pragma in CONNECTION_PRAGMAS:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                execute(pragma)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(_LOCKED_RETRY_S)


def _null(value: None) -> None:
    return value


# The driver binds str, int and float directly but sends every other value, None included, through
# its adapter lookup: with no adapter for NoneType that is two failed attribute lookups per NULL
# (measured: 20 NULL parameters 11.7 us to bind, 3.4 us with this one), and an envelope row has a
# dozen NULLs, all bound with the GIL held. Registering the identity adapter keeps NULL a NULL.
sqlite3.register_adapter(type(None), _null)


class SqliteWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    async def run(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Execute each (sql, parameters), in order, in one transaction.

        Raises sqlite3.Error as the driver does (and then nothing of the batch is in)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._run, statements)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=True)
        apply_connection_pragmas(conn.execute)
        # Appends need little cache (ids lead with the time, so inserts land on the right edge of
        # each index); SQLite's 2 MB default is resident memory in every worker.
        conn.execute("PRAGMA cache_size=-512")
        return conn

    def _run(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            # One transaction for the batch: a commit per statement doubled SQLite's CPU per row.
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                started, cpu_started = time.perf_counter(), time.thread_time()
                conn.execute(sql, params)
                ran = time.thread_time() - cpu_started
                # Time spent waiting (for the GIL, behind a busy event loop) already was a rest.
                waited = time.perf_counter() - started - ran
                if ran > waited:
                    time.sleep(min(_MAX_REST_S, ran - waited))
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
