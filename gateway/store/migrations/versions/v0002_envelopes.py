"""Envelopes: one row per model call.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-15

Hand-written: it must run on both SQLite and PostgreSQL, and match gateway/store/schema.py.
Column types are spelled out here (not imported from schema.py) so this file keeps describing
revision 0002 after the schema module moves on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    zero = sa.text("0")
    op.create_table(
        "envelopes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("envelope_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("key_id", sa.Text(), nullable=True),
        sa.Column("route", sa.Text(), nullable=True),
        sa.Column("feature", sa.Text(), nullable=True),
        sa.Column("template_id", sa.Text(), nullable=True),
        sa.Column("template_version", sa.Text(), nullable=True),
        sa.Column("template_hash", sa.Text(), nullable=True),
        sa.Column("model_requested", sa.Text(), nullable=True),
        sa.Column("model_served", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("attempts", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("cost_picousd", sa.BigInteger(), nullable=False, server_default=zero),
        sa.Column("cache_status", sa.Text(), nullable=True),
        sa.Column("cache_saved_tokens", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("cache_saved_picousd", sa.BigInteger(), nullable=False, server_default=zero),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("usage_reported", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("safety_flags", sa.JSON(), nullable=True),
        sa.Column("request_body", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_envelopes"),
        sa.UniqueConstraint("envelope_id", name="uq_envelopes_envelope_id"),
    )
    op.create_index("ix_envelopes_request_id", "envelopes", ["request_id"])
    op.create_index("ix_envelopes_day", "envelopes", ["day"])
    op.create_index("ix_envelopes_tenant_day", "envelopes", ["tenant", "day"])


def downgrade() -> None:
    op.drop_index("ix_envelopes_tenant_day", table_name="envelopes")
    op.drop_index("ix_envelopes_day", table_name="envelopes")
    op.drop_index("ix_envelopes_request_id", table_name="envelopes")
    op.drop_table("envelopes")
