"""An envelope as a ledger row: normalised from whatever produced it, then in the driver's own terms.

`normalize_envelope` turns an envelope (fresh from a request, or read back from a journal written
by any version) into a row of exactly the table's columns and kinds, or refuses it. The insert
then goes to the driver directly (`insert_statements`): SQLAlchemy's per-row bind
processing cost more CPU than everything else an envelope takes, and this statement never changes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from gateway.store.journal import encode
from gateway.store.schema import envelopes

ENVELOPE_KEYS: tuple[str, ...] = tuple(c.name for c in envelopes.columns if c.name != "id")
_TEXT = (
    "tenant", "key_id", "route", "feature", "template_id", "template_version", "template_hash",
    "model_requested", "model_served", "provider", "cache_status", "error_type", "request_body", "response_body",
)  # fmt: skip
_INT32 = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_saved_tokens", "status")
_INT64 = ("cost_picousd", "cache_saved_picousd")
_FLOAT = ("latency_ms", "ttft_ms")
_BOOL = ("stream", "usage_reported")
_JSON = ("attempts", "safety_flags")
_RANGE = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


class EnvelopeRejected(ValueError):
    """An envelope that cannot become a row (a missing request id, a value of the wrong kind)."""


def _to_int(name: str, v: Any, bits: int) -> int:
    if v is None:
        return 0
    if isinstance(v, bool):
        n = int(v)
    elif isinstance(v, int):
        n = v
    elif isinstance(v, float | Decimal):
        if not math.isfinite(v):
            raise EnvelopeRejected(f"{name}: {v} is not a finite number")
        n = round(v)
    elif isinstance(v, str):
        try:
            n = int(Decimal(v.strip()).to_integral_value())
        except ArithmeticError as e:
            raise EnvelopeRejected(f"{name}: {v[:40]!r} is not a number") from e
    else:
        raise EnvelopeRejected(f"{name}: {type(v).__name__} is not a number")
    lo, hi = _RANGE[bits]
    if not lo <= n <= hi:
        raise EnvelopeRejected(f"{name}: {n} is out of range")
    return n


def _to_float(name: str, v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise EnvelopeRejected(f"{name}: {str(v)[:40]!r} is not a number") from e
    return f if math.isfinite(f) else None


def _to_text(v: Any) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    # PostgreSQL text cannot hold NUL; one in a prompt must not cost the whole envelope.
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _to_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _to_json(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):  # already serialized by the caller (or a journal of an older version)
        try:
            return orjson.loads(v)
        except ValueError:
            return v
    # Through the journal's encoder and back: a value the database's JSON encoder would choke on (a
    # set, a Decimal, a datetime) must not fail a whole batch and pass for an outage.
    return orjson.loads(encode(v))


def _to_datetime(v: Any) -> datetime:
    if v is None:
        return datetime.now(UTC)
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, int | float) and not isinstance(v, bool):
        try:
            return datetime.fromtimestamp(v, UTC)
        except (OverflowError, OSError, ValueError) as e:
            raise EnvelopeRejected(f"created_at: {v} is not an epoch time") from e
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError as e:
            raise EnvelopeRejected(f"created_at: {v[:40]!r} is not an ISO time") from e
    else:
        raise EnvelopeRejected(f"created_at: {type(v).__name__} is not a time")
    # A naive time is taken as UTC (what the gateway means everywhere) rather than rejected.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def normalize_envelope(env: Mapping[str, Any]) -> dict[str, Any]:
    """The row for `env`: every column present, each of its column's kind. Raises EnvelopeRejected.

    `day` is always derived from `created_at` (UTC) so the two can never disagree; unknown keys
    are dropped.
    """
    eid = env.get("envelope_id")
    rid = env.get("request_id")
    if not eid:
        raise EnvelopeRejected("envelope_id missing")
    if rid is None or rid == "":
        raise EnvelopeRejected("request_id missing")
    created = _to_datetime(env.get("created_at"))
    row: dict[str, Any] = {
        "envelope_id": str(eid),
        "request_id": _to_text(rid),
        "created_at": created,
        "day": created.date(),
    }
    for k in _TEXT:
        row[k] = _to_text(env.get(k))
    for k in _INT32:
        row[k] = _to_int(k, env.get(k), 32)
    for k in _INT64:
        row[k] = _to_int(k, env.get(k), 64)
    for k in _FLOAT:
        row[k] = _to_float(k, env.get(k))
    for k in _BOOL:
        row[k] = _to_bool(env.get(k))
    for k in _JSON:
        row[k] = _to_json(env.get(k))
    return row


_INSERT_COLUMNS = ENVELOPE_KEYS


_SQLITE_ROWS_PER_STATEMENT = 64  # binding 64 x 30 parameters holds the GIL well under a millisecond


def _insert(values: str) -> str:
    return f"INSERT INTO envelopes ({', '.join(_INSERT_COLUMNS)}) VALUES {values} ON CONFLICT (envelope_id) DO NOTHING"


def insert_statements(rows: Sequence[Mapping[str, Any]], backend: str) -> list[tuple[str, Any]]:
    """(sql, parameters) pairs that insert `rows` idempotently, for `exec_driver_sql`.

    SQLite gets one multi-row INSERT per 64 rows: its driver releases and re-takes the GIL around
    every statement step, and under load each re-take waits for the busy event loop, so one step
    per row starved the writer (measured: the queue filled at ~2,000 requests/s). PostgreSQL gets
    an executemany, which asyncpg pipelines on the event loop.
    """
    params = driver_rows(rows, backend)
    if backend == "postgresql":
        marks = ", ".join(f"${i}" for i in range(1, len(_INSERT_COLUMNS) + 1))
        return [(_insert(f"({marks})"), params)] if params else []
    if backend != "sqlite":
        raise RuntimeError(f"no idempotent insert for {backend}")
    out = []
    start = 0
    while start < len(params):
        # Statements of 64, 32, ..., 1 rows only: the driver caches every distinct statement it
        # prepared (a 256-row one is large), so the shapes must be few.
        size = min(_SQLITE_ROWS_PER_STATEMENT, 1 << ((len(params) - start).bit_length() - 1))
        chunk = params[start:start + size]
        out.append((_sqlite_insert(size), tuple(v for row in chunk for v in row)))
        start += size
    return out


@functools.cache
def _sqlite_insert(rows: int) -> str:
    row_marks = "(" + ", ".join("?" for _ in _INSERT_COLUMNS) + ")"
    return _insert(", ".join(row_marks for _ in range(rows)))


_CREATED = _INSERT_COLUMNS.index("created_at")
_DAY = _INSERT_COLUMNS.index("day")
_JSON_AT = tuple(_INSERT_COLUMNS.index(c) for c in _JSON)


def driver_rows(rows: Sequence[Mapping[str, Any]], backend: str) -> list[tuple[Any, ...]]:
    """Normalised rows as the driver's parameters: JSON as text (asyncpg takes json/jsonb as text
    with the codec SQLAlchemy sets); on SQLite, times as SQLAlchemy's SQLite types store them, so
    the ORM reads these rows back unchanged."""
    sqlite = backend == "sqlite"
    out = []
    for row in rows:
        values = [row[c] for c in _INSERT_COLUMNS]
        for i in _JSON_AT:
            if values[i] is not None:
                values[i] = orjson.dumps(values[i]).decode()
        if sqlite:
            created: datetime = values[_CREATED]
            values[_CREATED] = created.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
            values[_DAY] = values[_DAY].isoformat()
        out.append(tuple(values))  # SQLAlchemy takes a list of tuples as an executemany
    return out
