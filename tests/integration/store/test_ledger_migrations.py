import asyncio

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from gateway.store.ledger import HEAD_REVISION, Ledger, LedgerUnavailable, alembic_config
from gateway.store.schema import metadata


def _schema_facts(sync_conn):
    insp = inspect(sync_conn)
    tables = set(insp.get_table_names())
    indexes = {i["name"] for i in insp.get_indexes("api_keys")} | {i["name"] for i in insp.get_indexes("audit_log")}
    uniques = {(u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints("api_keys")}
    return tables, indexes, uniques


def _diff(sync_conn):
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return compare_metadata(ctx, metadata)


async def test_migrate_creates_the_schema_and_twice_is_a_no_op(ledger_url):
    lg = Ledger.from_url(ledger_url)
    try:
        await lg.migrate()
        await lg.migrate()
        async with lg.read() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            tables, indexes, uniques = await conn.run_sync(_schema_facts)
        assert versions == [HEAD_REVISION]
        assert {"api_keys", "audit_log", "alembic_version"} <= tables
        assert {"ix_api_keys_tenant", "ix_audit_log_at"} <= indexes
        assert ("uq_api_keys_key_hash", ("key_hash",)) in uniques
    finally:
        await lg.aclose()


async def test_schema_module_matches_the_migrated_database(ledger):
    async with ledger.read() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []


async def test_concurrent_migrations_serialize(ledger_url):
    # Several workers start at once against a fresh database: all must come up.
    ledgers = [Ledger.from_url(ledger_url) for _ in range(4)]
    try:
        await asyncio.gather(*(lg.migrate() for lg in ledgers))
        async with ledgers[0].read() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        assert versions == [HEAD_REVISION]
    finally:
        for lg in ledgers:
            await lg.aclose()


async def test_ping_answers_true(ledger):
    assert await ledger.ping() is True


def _downgrade_base(sync_conn):
    command.downgrade(alembic_config(sync_conn), "base")
    return set(inspect(sync_conn).get_table_names())


async def test_downgrade_to_base_and_upgrade_again(ledger):
    async with ledger.write() as conn:
        left = await conn.run_sync(_downgrade_base)
    assert left <= {"alembic_version"}
    await ledger.migrate()
    async with ledger.read() as conn:
        assert await conn.run_sync(_diff) == []


def test_head_revision_constant_is_the_migrations_head():
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


async def test_a_ledger_at_head_is_not_migrated_again_and_a_behind_one_is(ledger_url):
    lg = Ledger.from_url(ledger_url)
    try:
        await lg.migrate()
        async with lg.write() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0001"))
        await lg.migrate()  # behind: upgraded
        async with lg.read() as conn:
            assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar() == HEAD_REVISION
            assert await conn.run_sync(lambda c: inspect(c).has_table("envelopes"))
    finally:
        await lg.aclose()


async def test_migrate_isolated_migrates_in_a_child_process(tmp_path):
    url = f"sqlite:///{tmp_path}/isolated.db"
    lg = Ledger.from_url(url)
    try:
        assert not await lg.at_head()
        await lg.migrate_isolated(url)
        assert await lg.at_head()
        await lg.migrate_isolated(url)  # at head: nothing to do, no child
    finally:
        await lg.aclose()


async def test_migrate_isolated_reports_a_failing_child_in_one_line(tmp_path):
    lg = Ledger.from_url(f"sqlite:///{tmp_path}/a.db")
    try:
        # The child gets a URL it cannot use: its one-line reason comes back as LedgerUnavailable.
        with pytest.raises(LedgerUnavailable, match="migration failed"):
            await lg.migrate_isolated("postgresql://postgres@127.0.0.1:1/nothing")
    finally:
        await lg.aclose()
