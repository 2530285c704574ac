"""The envelope of a model call by name: `Envelope`, one field per column of the ledger's `envelopes` table.

What a finished call leaves is built with keyword arguments (`Envelope(request_id=..., ...)`), so the type
checker sees every name and kind, and no value can land in its neighbour's column when a column is added
or moved. The fields are the table's columns but `id` (the table's) and `day` (derived from created_at);
the columns later stages fill (templates, the response cache, safety flags) default to what the column
holds when nothing is known, so a call that never met those stages need not name them.

A NamedTuple is a tuple: the writer's fast path takes its values without a dict. Its field order is not
the table's (a field with a default cannot precede one without); `IN_COLUMN_ORDER` puts the values in
column order, made from the names. That the fields are exactly the columns is checked when this module
is imported: a column added to the schema without its field here (or a field the schema lost) fails the
import, naming it, rather than shifting values or dropping one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from keyword import iskeyword
from operator import itemgetter
from typing import Any, NamedTuple

from gateway.store.schema import envelopes


class Envelope(NamedTuple):
    envelope_id: str
    request_id: str
    created_at: float  # epoch seconds (time.time())
    tenant: str | None
    key_id: str | None
    route: str | None
    feature: str | None
    model_requested: str | None
    model_served: str | None
    provider: str | None
    attempts: list[dict[str, Any]] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_picousd: int
    cache_write_tokens: int
    cache_write_1h_tokens: int
    cache_write_picousd: int
    latency_ms: float | None
    ttft_ms: float | None
    status: int
    error_type: str | None
    stream: bool
    usage_reported: bool
    request_body: str | None
    response_body: str | None
    # Filled by later stages (prompt templates, the response cache, safety scanning).
    template_id: str | None = None
    template_version: str | None = None
    template_hash: str | None = None
    cache_status: str | None = None  # miss | hit | semantic-hit | bypass
    cache_saved_tokens: int = 0
    cache_saved_picousd: int = 0
    safety_flags: dict[str, Any] | list[Any] | None = None


# The columns an envelope names, in the table's order (`day` is derived, `id` is the table's).
COLUMNS: tuple[str, ...] = tuple(c.name for c in envelopes.columns if c.name not in ("id", "day"))


def check_fields(columns: Sequence[str], fields: Sequence[str]) -> None:
    """Raise, naming them, if the columns and the fields are not the same names (in any order)."""
    missing = [c for c in columns if c not in fields]
    extra = [f for f in fields if f not in columns]
    if missing or extra:
        raise RuntimeError(f"gateway.store.envelope_fields.Envelope and the ledger's envelopes table differ: "
                           f"columns without a field {missing}, fields without a column {extra}")


check_fields(COLUMNS, Envelope._fields)

# An Envelope's values in COLUMNS order, in one C call.
IN_COLUMN_ORDER = itemgetter(*(Envelope._fields.index(c) for c in COLUMNS))


def keyword_tuple(names: Sequence[str]) -> Callable[..., tuple[Any, ...]]:
    """A function that takes exactly `names` as keyword arguments and returns their values in this order.

    Generated from the names, so the order cannot be got wrong. (Why not `Envelope(**by_name)` for a whole
    envelope: CPython 3.11 passes a call of more than 15 keyword arguments through a dict it builds and
    unpacks again, ~25k instructions for an envelope's 26, where a list of the values cost ~3k.)"""
    for name in names:
        if not name.isidentifier() or iskeyword(name):
            raise ValueError(f"{name!r} is not a parameter name")
    if len(set(names)) != len(names):
        raise ValueError(f"a name twice in {names}")
    args = ", ".join(names)
    scope: dict[str, Any] = {}
    exec(f"def keyword_tuple(*, {args}):\n    return ({args},)\n", scope)  # identifiers only, checked above
    made: Callable[..., tuple[Any, ...]] = scope["keyword_tuple"]
    return made


def assembler(names: Sequence[str]) -> Callable[[tuple[Any, ...]], Envelope]:
    """A function of the values of the fields `names` (a tuple, in that order) that returns the Envelope,
    the fields not named at their defaults. Raises ValueError, naming them, for a name that is not a
    field, or a field without a default that is not named: at import, where it is made."""
    unknown = [n for n in names if n not in Envelope._fields]
    unnamed = [f for f in Envelope._fields if f not in names and f not in Envelope._field_defaults]
    if unknown or unnamed or len(set(names)) != len(names):
        raise ValueError(f"an Envelope from {names}: not fields {unknown}, fields without a value {unnamed}")
    rest = tuple(f for f in Envelope._fields if f not in names)
    defaults = tuple(Envelope._field_defaults[f] for f in rest)
    in_field_order = itemgetter(*((*names, *rest).index(f) for f in Envelope._fields))
    new = tuple.__new__

    def assemble(values: tuple[Any, ...]) -> Envelope:
        return new(Envelope, in_field_order(values + defaults))

    return assemble
