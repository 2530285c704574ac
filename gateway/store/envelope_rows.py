"""An envelope as a ledger row: normalised from whatever produced it, then in the driver's own terms.

`values_row_json` makes the row of a request's `Envelope` (envelope_fields.py) when its values are
already of their columns' kinds (what the gateway builds). `normalize_envelope` turns any other
envelope (a mapping: submitted as one, or read back from a journal written by any version) into a
row of exactly the table's columns and kinds, or refuses it. `row_json`
makes the row one JSON array (what waits in the writer's queue), and `batch_statements` turns a
batch into statements for the driver: SQLAlchemy's per-row bind processing cost more CPU than
everything else an envelope takes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from itertools import chain
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Boolean, Date, Float, Integer, Text

from gateway.store.envelope_fields import Envelope
from gateway.store.journal import encode
from gateway.store.schema import UTCDateTime, envelopes

ENVELOPE_KEYS: tuple[str, ...] = tuple(c.name for c in envelopes.columns if c.name != "id")
_TEXT = (
    "tenant", "key_id", "route", "feature", "template_id", "template_version", "template_hash",
    "model_requested", "model_served", "provider", "cache_status", "error_type", "request_body", "response_body",
)  # fmt: skip
_INT32 = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens",
          "cache_saved_tokens", "status")
_INT64 = ("cost_picousd", "cache_write_picousd", "cache_saved_picousd")
_FLOAT = ("latency_ms", "ttft_ms")
_BOOL = ("stream", "usage_reported")
_JSON = ("attempts", "safety_flags")
_RANGE = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}
_KINDS = ("envelope_id", "request_id", "created_at", "day", *_TEXT, *_INT32, *_INT64, *_FLOAT, *_BOOL, *_JSON)
if sorted(_KINDS) != sorted(ENVELOPE_KEYS):
    # A column in no list would be dropped from every row (and fail every insert): say which, at import.
    raise RuntimeError(f"envelope_rows: columns without a kind {sorted(set(ENVELOPE_KEYS) - set(_KINDS))}, "
                       f"kinds without a column {sorted(set(_KINDS) - set(ENVELOPE_KEYS))} (or one listed twice)")


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
    are dropped. A value already of its column's kind (what the gateway itself builds) passes
    through a fast check; only the others take the converters.
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
    get = env.get
    for k in _TEXT:
        v = get(k)
        row[k] = v if v is None or (type(v) is str and "\x00" not in v) else _to_text(v)
    lo, hi = _RANGE[32]
    for k in _INT32:
        v = get(k)
        row[k] = v if type(v) is int and lo <= v <= hi else _to_int(k, v, 32)
    lo, hi = _RANGE[64]
    for k in _INT64:
        v = get(k)
        row[k] = v if type(v) is int and lo <= v <= hi else _to_int(k, v, 64)
    for k in _FLOAT:
        v = get(k)
        row[k] = v if v is None or (type(v) is float and math.isfinite(v)) else _to_float(k, v)
    for k in _BOOL:
        v = get(k)
        row[k] = v if type(v) is bool else _to_bool(v)
    for k in _JSON:
        row[k] = _to_json(get(k))
    return row


_INSERT_COLUMNS = ENVELOPE_KEYS
_CREATED = _INSERT_COLUMNS.index("created_at")
_DAY = _INSERT_COLUMNS.index("day")
_JSON_AT = tuple(_INSERT_COLUMNS.index(c) for c in _JSON)
_BOOL_AT = tuple(_INSERT_COLUMNS.index(c) for c in _BOOL)
_ENVELOPE_ID = _INSERT_COLUMNS.index("envelope_id")
_REQUEST_ID = _INSERT_COLUMNS.index("request_id")


def row_json(row: Mapping[str, Any], backend: str) -> str:
    """A normalised row as one JSON array in column order: the form a batch insert unpacks.

    JSON columns are carried as their text; times as text (on SQLite as SQLAlchemy's SQLite type
    stores them, so the ORM reads these rows back unchanged; on PostgreSQL with their offset)."""
    values = [row[c] for c in _INSERT_COLUMNS]
    for i in _JSON_AT:
        if values[i] is not None:
            values[i] = orjson.dumps(values[i]).decode()
    created: datetime = values[_CREATED]
    if backend == "sqlite":
        values[_CREATED] = created.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        # As SQLite stores them: the driver binds an int directly but takes a bool through its
        # adapter lookup (two failed attribute lookups, ~0.4 us each, with the GIL held).
        for i in _BOOL_AT:
            values[i] = int(values[i])
    else:
        values[_CREATED] = created.isoformat()
    values[_DAY] = values[_DAY].isoformat()
    # As text: orjson's bytes keep the 8 KB buffer they were written into (measured with
    # tracemalloc), and thousands of rows may wait in the queue; the str is the row's own size.
    return orjson.dumps(values).decode()


_TEXT_AT = tuple(_INSERT_COLUMNS.index(c) for c in ("request_id", *_TEXT))
# (column index, lowest, highest) of every integer column
_INT_AT = tuple((_INSERT_COLUMNS.index(c), *_RANGE[bits]) for cols, bits in ((_INT32, 32), (_INT64, 64)) for c in cols)
_FLOAT_AT = tuple(_INSERT_COLUMNS.index(c) for c in _FLOAT)


class _NotPlain(Exception):
    """A value that is not already of its column's kind: the full path converts it."""


def envelope_row_json(env: Mapping[str, Any], backend: str) -> str:
    """`row_json(normalize_envelope(env), backend)` in one pass, for an envelope submitted as a mapping.

    Values already of their column's kind are checked and placed straight
    into the row; an envelope with any other value takes the full path, so the result (or the
    EnvelopeRejected) is the same either way."""
    try:
        return _plain_row_json(env, backend)
    except _NotPlain:
        return row_json(normalize_envelope(env), backend)


def values_row_json(envelope: Envelope, backend: str) -> str | None:
    """`envelope_row_json(envelope._asdict(), backend)` without the dict, for values already of their
    columns' kinds; None for any other (the dict then takes the full path)."""
    values = list(envelope)  # its fields are the columns in order (envelope_fields)
    values.insert(_DAY, None)
    try:
        return _checked_row_json(values, backend)
    except _NotPlain:
        return None


def _plain_row_json(env: Mapping[str, Any], backend: str) -> str:
    return _checked_row_json([env.get(c) for c in _INSERT_COLUMNS], backend)


def _checked_row_json(values: list[Any], backend: str) -> str:
    """The row of `values` (in column order, `day` a placeholder), checked and converted in place."""
    created = values[_CREATED]
    if type(created) is not float or not values[_ENVELOPE_ID] or type(values[_ENVELOPE_ID]) is not str:
        raise _NotPlain
    for i in _TEXT_AT:
        v = values[i]
        if v is not None and (type(v) is not str or "\x00" in v):
            raise _NotPlain
    if not values[_REQUEST_ID]:
        raise _NotPlain
    for i, lo, hi in _INT_AT:
        v = values[i]
        if v is None:
            values[i] = 0
        elif type(v) is not int or not lo <= v <= hi:
            raise _NotPlain
    for i in _FLOAT_AT:
        v = values[i]
        if v is not None and (type(v) is not float or not math.isfinite(v)):
            raise _NotPlain
    for i in _BOOL_AT:
        v = values[i]
        if type(v) is not bool:
            raise _NotPlain
        if backend == "sqlite":
            values[i] = int(v)  # see row_json
    for i in _JSON_AT:
        v = values[i]
        if v is not None:
            if type(v) is not list and type(v) is not dict:
                raise _NotPlain
            try:
                values[i] = orjson.dumps(v).decode()
            except TypeError:
                raise _NotPlain from None
    try:
        values[_CREATED], values[_DAY] = created_texts(created, backend)
    except (OverflowError, OSError, ValueError):
        raise _NotPlain from None
    return orjson.dumps(values).decode()


class _Second:
    """The last whole second turned into text: every row of that second shares it."""

    __slots__ = ("day", "second", "space", "tee")

    def __init__(self, second: int) -> None:
        at = datetime.fromtimestamp(second, UTC).replace(tzinfo=None)
        self.second = second
        self.space, self.tee, self.day = at.isoformat(" "), at.isoformat(), at.date().isoformat()


_last_second = _Second(0)


def created_texts(created: float, backend: str) -> tuple[str, str]:
    """(created_at, day) of a row as `row_json` writes them from `datetime.fromtimestamp(created, UTC)`,
    to the character: the microseconds are split off as CPython does (half-even), the rest is memoised
    per second (making the datetime and its text was a third of the row's cost)."""
    global _last_second
    frac, whole = math.modf(created)
    micro = round(frac * 1e6)
    second = int(whole)
    if micro >= 1_000_000:
        micro -= 1_000_000
        second += 1
    elif micro < 0:
        micro += 1_000_000
        second -= 1
    memo = _last_second
    if memo.second != second:
        memo = _last_second = _Second(second)
    if backend == "sqlite":
        return f"{memo.space}.{micro:06d}", memo.day
    return (f"{memo.tee}.{micro:06d}+00:00" if micro else f"{memo.tee}+00:00"), memo.day


def row_from_json(item: str) -> dict[str, Any]:
    """`row_json` read back as an envelope (for the journal: `normalize_envelope` takes it again)."""
    return dict(zip(_INSERT_COLUMNS, orjson.loads(item), strict=True))


# Rows per insert statement on SQLite, which runs in the worker (see sqlite_writer.py): it spends
# ~10 us of CPU per row, and on a machine with few cores a long burst of it delays the request path
# (15 ms bursts put the p99 at one connection from 0.9 to 4.5 ms, 1 ms bursts to 1.4 ms); but each
# statement costs the writer thread a wait for the GIL (up to 5 ms behind a busy loop), so with too
# few rows per statement it cannot keep up.
_SQLITE_ROWS_PER_STATEMENT = 32


def batch_statements(items: Sequence[str], backend: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Statements (sql, parameters) that insert every `row_json` item idempotently.

    PostgreSQL gets one statement with one text parameter and unpacks the rows itself: asyncpg would
    otherwise encode ~30 parameters a row on the event loop (and a round trip per statement waits a
    turn of a busy loop). SQLite gets multi-row VALUES with the values bound: unpacking JSON in SQL
    cost it 21 us of CPU a row against 9 for binding (measured); the rows are parsed back here in
    one C call per statement."""
    if backend != "sqlite":
        return [(_PG_INSERT, ("[" + ",".join(items) + "]",))]
    out = []
    start = 0
    while start < len(items):
        # 32 rows, then 16, 8, ..., 1: the driver keeps every distinct statement it prepared, so
        # the shapes must be few.
        size = min(_SQLITE_ROWS_PER_STATEMENT, 1 << ((len(items) - start).bit_length() - 1))
        rows = orjson.loads("[" + ",".join(items[start:start + size]) + "]")
        out.append((_sqlite_values(size), tuple(chain.from_iterable(rows))))
        start += size
    return out


def _pg_cast(column: Any) -> str:
    t = column.type
    if isinstance(t, UTCDateTime):
        return "::timestamptz"
    for kind, cast in ((JSON, "::json"), (Boolean, "::boolean"), (Date, "::date"), (BigInteger, "::bigint"),
                       (Integer, "::integer"), (Float, "::double precision"), (Text, "")):
        if isinstance(t, kind):
            return cast
    raise RuntimeError(f"envelopes.{column.name}: no cast for {t!r}")


def _insert(select: str) -> str:
    return f"INSERT INTO envelopes ({', '.join(_INSERT_COLUMNS)}) {select} ON CONFLICT (envelope_id) DO NOTHING"


@functools.cache
def _sqlite_values(rows: int) -> str:
    marks = "(" + ", ".join("?" for _ in _INSERT_COLUMNS) + ")"
    return _insert("VALUES " + ", ".join(marks for _ in range(rows)))


_PG_COLUMNS = ", ".join(f"(r ->> {i}){_pg_cast(envelopes.c[c])}" for i, c in enumerate(_INSERT_COLUMNS))
_PG_INSERT = _insert(f"SELECT {_PG_COLUMNS} FROM json_array_elements($1::text::json) AS r")
