"""The ledger's tables (SQLAlchemy Core), the one description the code and the migrations share.

A change here needs a new migration in `migrations/versions/`; the integration tests compare
this metadata with a migrated database on both back ends, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)

# Explicit constraint names: migrations can then drop or alter them by name on every back end.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every back end.

    SQLite has no time zone type: it stores text and returns naive values. Storing UTC and
    re-attaching UTC on the way out keeps comparisons and ordering right on both back ends.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("prefix", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Index("ix_api_keys_tenant", "tenant"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_log_at", "at"),
)

# One row per model call, written in batches by gateway.store.envelopes.EnvelopeWriter.
envelopes = Table(
    "envelopes",
    metadata,
    # BIGINT on PostgreSQL: a busy fleet passes 2**31 calls in weeks. SQLite needs exactly INTEGER
    # for an autoincrementing rowid alias (and its integers are 64-bit anyway).
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    # Assigned by the gateway (uuid4 hex) before the first write attempt: a batch that is retried or
    # replayed from the journal inserts each envelope at most once (ON CONFLICT DO NOTHING).
    Column("envelope_id", Text, nullable=False),
    Column("request_id", Text, nullable=False),  # not unique: clients may reuse request ids
    Column("created_at", UTCDateTime, nullable=False),
    Column("day", Date, nullable=False),  # the UTC day of created_at, what reports group by
    Column("tenant", Text, nullable=True),  # None only for calls rejected before authentication
    Column("key_id", Text, nullable=True),
    Column("route", Text, nullable=True),
    Column("feature", Text, nullable=True),
    Column("template_id", Text, nullable=True),
    Column("template_version", Text, nullable=True),
    Column("template_hash", Text, nullable=True),
    Column("model_requested", Text, nullable=True),
    Column("model_served", Text, nullable=True),
    Column("provider", Text, nullable=True),
    Column("attempts", JSON(none_as_null=True), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, server_default=text("0")),
    Column("completion_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cached_tokens", Integer, nullable=False, server_default=text("0")),
    # Money as exact integers of 1e-12 USD: sums over millions of calls stay exact, and a
    # $0.0000001 call is still 100_000 units.
    Column("cost_picousd", BigInteger, nullable=False, server_default=text("0")),
    # Prompt tokens written into the provider's prompt cache (part of prompt_tokens; Anthropic bills
    # them above the input price), of which kept for an hour, and what they cost (part of cost_picousd).
    Column("cache_write_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cache_write_1h_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cache_write_picousd", BigInteger, nullable=False, server_default=text("0")),
    Column("cache_status", Text, nullable=True),  # miss | hit | semantic-hit | bypass
    Column("cache_saved_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cache_saved_picousd", BigInteger, nullable=False, server_default=text("0")),
    Column("latency_ms", Float, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("status", Integer, nullable=False, server_default=text("0")),
    Column("error_type", Text, nullable=True),
    Column("stream", Boolean, nullable=False, server_default=false()),
    Column("usage_reported", Boolean, nullable=False, server_default=false()),
    Column("safety_flags", JSON(none_as_null=True), nullable=True),
    Column("request_body", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    UniqueConstraint("envelope_id", name="uq_envelopes_envelope_id"),
    Index("ix_envelopes_request_id", "request_id"),
    Index("ix_envelopes_day", "day"),
    # Also serves lookups by tenant alone (its leading column), so there is no separate tenant index.
    Index("ix_envelopes_tenant_day", "tenant", "day"),
)
