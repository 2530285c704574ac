"""`python -m gateway.store.migrate`: bring the ledger (URL in $GATEWAY_LEDGER_URL) to the newest schema.

`gateway serve` runs this as a child process when the ledger is behind, so alembic and mako
(~12 MB) never load into a process that goes on serving. The URL travels in the environment,
not the command line, because it may carry a password.
"""

from __future__ import annotations

import asyncio
import os
import sys

from gateway.store.ledger import Ledger, LedgerUnavailable

URL_VARIABLE = "GATEWAY_LEDGER_URL"


async def _migrate(url: str) -> None:
    ledger = Ledger.from_url(url)
    try:
        await ledger.migrate()
    finally:
        await ledger.aclose()


def main() -> int:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        print(f"gateway.store.migrate: {URL_VARIABLE} is not set", file=sys.stderr)
        return 2
    try:
        asyncio.run(_migrate(url))
    except LedgerUnavailable as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
