"""Envelopes: prompt-cache writes counted and priced apart.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08

Anthropic bills the prompt tokens it writes into its prompt cache above the input price (1.25x for
the 5-minute cache, 2x for the 1-hour one). Each envelope keeps those tokens (a part of
prompt_tokens), the part of them kept for an hour, and what they cost (a part of cost_picousd),
so a cost report can show the writes and an audit can re-price a call. Rows written before this
revision read 0 in all three: their writes were counted, and priced, as input.

Hand-written: it must run on both SQLite and PostgreSQL, and match gateway/store/schema.py. Adding a
NOT NULL column with a constant default is a metadata-only change on both (no table rewrite on
PostgreSQL 11+), so the upgrade is quick on a large ledger. Column types are spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("cache_write_tokens", sa.Integer),
    ("cache_write_1h_tokens", sa.Integer),
    ("cache_write_picousd", sa.BigInteger),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("envelopes", sa.Column(name, kind(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    # A batch: SQLite before 3.35 cannot drop a column in place; the batch copies the table there.
    with op.batch_alter_table("envelopes") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
