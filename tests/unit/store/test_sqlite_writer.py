"""The SQLite envelope writer's thread: a batch of statements in order, in one transaction, errors as the driver's."""

import sqlite3
from pathlib import Path

import pytest

from gateway.store.sqlite_writer import SqliteWriter

INSERT = "INSERT INTO t (v) SELECT value FROM json_each(?)"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "w.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
    return path


def recreate(path: Path) -> None:
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")


def values(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY rowid")]


async def test_statements_run_in_order_and_are_committed(db: Path) -> None:
    writer = SqliteWriter(db)
    await writer.run([(INSERT, ("[1, 2]",)), (INSERT, ("[3]",))])
    assert values(db) == [1, 2, 3]
    await writer.aclose()


async def test_a_refused_statement_raises_the_drivers_error_and_nothing_of_its_batch_is_in(db: Path) -> None:
    writer = SqliteWriter(db)
    await writer.run([(INSERT, ("[1]",))])
    with pytest.raises(sqlite3.IntegrityError):
        await writer.run([(INSERT, ("[2]",)), (INSERT, ("[3, 1]",)), (INSERT, ("[4]",))])
    assert values(db) == [1]
    await writer.run([(INSERT, ("[5]",))])  # the connection is still good
    assert values(db) == [1, 5]
    await writer.aclose()


async def test_a_broken_database_raises_and_the_next_batch_reopens_the_file(db: Path) -> None:
    writer = SqliteWriter(db)
    await writer.run([(INSERT, ("[1]",))])
    with pytest.raises(sqlite3.OperationalError):
        await writer.run([("INSERT INTO missing (v) SELECT value FROM json_each(?)", ("[1]",))])
    recreate(db)
    await writer.run([(INSERT, ("[7]",))])
    assert values(db) == [7]
    await writer.aclose()
