"""The envelope of a model call by name: `Envelope`, one field per column of the ledger's `envelopes` table.

The fields are the table's columns, in its order, but `id` (the table's) and `day` (derived from
created_at): a NamedTuple is a tuple, so the writer's fast path takes the values as they are, and field
i is column i. That is checked when this module is imported: a column added to the schema without its
field here, a field the schema lost, or two swapped, fail the import, naming them, rather than shift
values into a neighbour's column.

Envelopes are made by name: `new_envelope(tenant=..., ...)` (the later stages' columns, templates, the
response cache and safety flags, at what they hold for a call that did not meet them), or on the request
path by a builder `envelope_builder` generates from the names of the Call's attributes each column takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from keyword import iskeyword
from typing import Any, NamedTuple

from gateway.store.schema import envelopes


class Envelope(NamedTuple):
    """The columns in the table's order: field i is the row's value i (with `day` put in after created_at)."""

    envelope_id: str
    request_id: str
    created_at: float  # epoch seconds (time.time())
    tenant: str | None
    key_id: str | None
    route: str | None
    feature: str | None
    template_id: str | None
    template_version: str | None
    template_hash: str | None
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
    cache_status: str | None  # miss | hit | semantic-hit | bypass
    cache_saved_tokens: int
    cache_saved_picousd: int
    latency_ms: float | None
    ttft_ms: float | None
    status: int
    error_type: str | None
    stream: bool
    usage_reported: bool
    safety_flags: dict[str, Any] | list[Any] | None
    request_body: str | None
    response_body: str | None


# What the columns later stages fill (prompt templates, the response cache, safety scanning) hold for a
# call that did not meet them. (Not NamedTuple defaults: those can only be the last fields.)
LATER_STAGES: dict[str, Any] = {
    "template_id": None, "template_version": None, "template_hash": None,
    "cache_status": None, "cache_saved_tokens": 0, "cache_saved_picousd": 0,
    "safety_flags": None,
}

# The columns an envelope names, in the table's order (`day` is derived, `id` is the table's).
COLUMNS: tuple[str, ...] = tuple(c.name for c in envelopes.columns if c.name not in ("id", "day"))


def check_fields(columns: Sequence[str], fields: Sequence[str]) -> None:
    """Raise, naming them, if the fields are not the columns in the columns' order."""
    missing = [c for c in columns if c not in fields]
    extra = [f for f in fields if f not in columns]
    if missing or extra or tuple(columns) != tuple(fields):
        moved = [] if missing or extra else [f for f, c in zip(fields, columns, strict=True) if f != c]
        raise RuntimeError(f"gateway.store.envelope_fields.Envelope and the ledger's envelopes table differ: "
                           f"columns without a field {missing}, fields without a column {extra}, "
                           f"fields out of the columns' order {moved}")


check_fields(COLUMNS, Envelope._fields)


def new_envelope(**values: Any) -> Envelope:
    """An Envelope by keyword, the later stages' columns at LATER_STAGES unless given (not for the
    request path: see envelope_builder)."""
    return Envelope(**{**LATER_STAGES, **values})


def envelope_builder(sources: Mapping[str, Sequence[str]], worked_out: Sequence[str]) -> Callable[..., Envelope]:
    """A function `build(*objects, **worked_out)` that returns the Envelope whose columns named in
    `sources[p]` are the attributes of those names of its positional argument `p` (in the order of
    `sources`), those in `worked_out` its keyword arguments of those names, and the rest LATER_STAGES.

    Generated from the names (checked here: every column has one source), it builds the tuple in
    column order in one expression. Not `Envelope(tenant=call.tenant, ...)` on the request path: CPython
    3.11 passes a call of more than 15 keyword arguments through a dict it builds and unpacks again
    (~25k instructions for an envelope's 26, measured; the list of the values cost ~3k)."""
    named = [*(c for cols in sources.values() for c in cols), *worked_out]
    unknown = [c for c in named if c not in COLUMNS]
    twice = sorted({c for c in named if named.count(c) > 1})
    unnamed = [c for c in COLUMNS if c not in named and c not in LATER_STAGES]
    odd = [n for n in (*sources, *named) if not n.isidentifier() or iskeyword(n)]
    if unknown or twice or unnamed or odd:
        raise ValueError(f"envelope_builder: not columns {unknown}, named twice {twice}, "
                         f"columns without a value {unnamed}, not names {odd}")
    source = {c: f"{p}.{c}" for p, cols in sources.items() for c in cols}
    source.update((c, c) for c in worked_out)
    scope: dict[str, Any] = {"_new": tuple.__new__, "Envelope": Envelope, "_later": LATER_STAGES}
    # The later stages' values written in (None and 0 as literals: no lookup a request).
    values = ", ".join(source.get(c) or (repr(LATER_STAGES[c]) if LATER_STAGES[c] in (None, 0) else f"_later[{c!r}]")
                       for c in COLUMNS)
    params = ", ".join(sources) + (", *, " + ", ".join(worked_out) if worked_out else "")
    exec(f"def build({params}):\n    return _new(Envelope, ({values},))\n", scope)  # names only, checked above
    build: Callable[..., Envelope] = scope["build"]
    return build
