"""Revision 0003 (cache-write columns) upgrades a ledger that already holds 0002 envelopes, on both back ends."""

from __future__ import annotations

from datetime import date

from alembic import command
from sqlalchemy import inspect, text

from gateway.reports.costs import cost_report
from gateway.store.envelopes import EnvelopeWriter
from gateway.store.ledger import Ledger, alembic_config
from tests.integration.store.test_ledger_migrations import _diff

NEW = ("cache_write_tokens", "cache_write_1h_tokens", "cache_write_picousd")


def _columns(sync_conn) -> set[str]:
    return {c["name"] for c in inspect(sync_conn).get_columns("envelopes")}


async def _version(lg: Ledger) -> str:
    async with lg.read() as conn:
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()


async def test_upgrade_from_0002_keeps_the_envelopes_and_adds_the_write_columns(ledger_url, tmp_path):
    lg = Ledger.from_url(ledger_url)
    try:
        async with lg.write() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0002"))
        async with lg.write() as conn:  # what a 0002 gateway wrote: no cache-write columns
            assert not set(NEW) & await conn.run_sync(_columns)
            await conn.execute(text(
                "INSERT INTO envelopes (envelope_id, request_id, created_at, day, tenant, prompt_tokens,"
                " cached_tokens, cost_picousd) VALUES ('old1', 'r1', '2026-12-01 10:00:00', '2026-12-01', 'acme',"
                " 1200, 100, 9007199254740993)"))
        await lg.migrate()
        assert await _version(lg) == "0003"
        async with lg.read() as conn:
            assert set(NEW) <= await conn.run_sync(_columns)
            assert await conn.run_sync(_diff) == []
            old = (await conn.execute(text(
                "SELECT prompt_tokens, cost_picousd, cache_write_tokens, cache_write_1h_tokens, cache_write_picousd"
                " FROM envelopes WHERE envelope_id = 'old1'"))).one()
        assert tuple(old) == (1200, 9007199254740993, 0, 0, 0)  # kept, and its writes read 0

        # The writer of this version fills the new columns, and the report sums old and new rows.
        writer = EnvelopeWriter(lg, tmp_path / "journal", batch_size=4)
        await writer.start()
        writer.submit({"envelope_id": "new1", "request_id": "r2", "created_at": 1_764_583_200.0, "tenant": "acme",
                       "prompt_tokens": 3000, "cache_write_tokens": 2500, "cache_write_1h_tokens": 500,
                       "cost_picousd": 2**62, "cache_write_picousd": 2**61})
        await writer.aclose()
        (row,) = await cost_report(lg, tenant="acme", since=date(2025, 1, 1), group_by=())
        assert (row.requests, row.prompt_tokens) == (2, 4200)
        assert (row.cache_write_tokens, row.cache_write_1h_tokens) == (2500, 500)
        assert (row.cost_picousd, row.cache_write_picousd) == (9007199254740993 + 2**62, 2**61)

        # And back: 0002's table without the three columns, the envelopes still there.
        async with lg.write() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0002"))
        async with lg.read() as conn:
            assert not set(NEW) & await conn.run_sync(_columns)
            ids = (await conn.execute(text("SELECT envelope_id FROM envelopes ORDER BY envelope_id"))).scalars().all()
        assert ids == ["new1", "old1"]
        await lg.migrate()
        assert await _version(lg) == "0003"
        async with lg.read() as conn:  # indexes and constraints survived the round trip
            assert await conn.run_sync(_diff) == []
    finally:
        await lg.aclose()
