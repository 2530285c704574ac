from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from gateway.store.keys import KeyStore
from gateway.store.ledger import HEAD_REVISION, alembic_config
from gateway.store.schema import metadata


def _facts(sync_conn):
    insp = inspect(sync_conn)
    tables = set(insp.get_table_names())
    if "envelopes" not in tables:
        return tables, set(), set()
    indexes = {(i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes("envelopes")}
    uniques = {(u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints("envelopes")}
    return tables, indexes, uniques


def _diff(sync_conn):
    return compare_metadata(MigrationContext.configure(sync_conn, opts={"compare_type": True}), metadata)


async def _version(ledger):
    async with ledger.read() as conn:
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()


async def test_head_has_the_envelopes_table_and_its_indexes(ledger):
    assert await _version(ledger) == [HEAD_REVISION]
    async with ledger.read() as conn:
        tables, indexes, uniques = await conn.run_sync(_facts)
        assert await conn.run_sync(_diff) == []
    assert "envelopes" in tables
    assert {
        ("ix_envelopes_request_id", ("request_id",), False),
        ("ix_envelopes_day", ("day",), False),
        ("ix_envelopes_tenant_day", ("tenant", "day"), False),
    } <= indexes
    assert ("uq_envelopes_envelope_id", ("envelope_id",)) in uniques


def _downgrade_to_0001(sync_conn):
    command.downgrade(alembic_config(sync_conn), "0001")


async def test_downgrade_to_0001_keeps_keys_and_upgrade_again_matches_the_schema(ledger):
    rec, _ = await KeyStore(ledger).create("acme")
    async with ledger.write() as conn:
        await conn.run_sync(_downgrade_to_0001)
    assert await _version(ledger) == ["0001"]
    async with ledger.read() as conn:
        tables, _, _ = await conn.run_sync(_facts)
    assert "envelopes" not in tables and "api_keys" in tables
    assert await KeyStore(ledger).get(rec.id) == rec
    await ledger.migrate()
    assert await _version(ledger) == [HEAD_REVISION]
    async with ledger.read() as conn:
        assert await conn.run_sync(_diff) == []
    assert await KeyStore(ledger).get(rec.id) == rec


async def test_server_defaults_fill_what_an_ad_hoc_insert_leaves_out(ledger):
    async with ledger.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO envelopes (envelope_id, request_id, created_at, day)"
                " VALUES ('e1', 'r1', CURRENT_TIMESTAMP, CURRENT_DATE)"
            )
        )
        row = (
            await conn.execute(
                text("SELECT prompt_tokens, cost_picousd, status, stream, usage_reported FROM envelopes")
            )
        ).one()
    assert tuple(row) in ((0, 0, 0, False, False), (0, 0, 0, 0, 0))
