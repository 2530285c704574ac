"""Alembic environment for the ledger.

The gateway runs migrations itself (`Ledger.migrate()`), handing over a connection that is
already inside a locked transaction. Run by hand (`alembic -c <ini>` with `sqlalchemy.url` set),
it opens its own connection from the URL through the same async drivers the gateway uses.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from gateway.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    from gateway.store.ledger import Ledger

    ledger = Ledger.from_url(url)
    try:
        async with ledger.write() as conn:
            await conn.run_sync(_run)
    finally:
        await ledger.aclose()


def _main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (the ledger URL) to run migrations by hand")
    asyncio.run(_run_from_url(url))


_main()
