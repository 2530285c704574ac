"""Cost reports from the envelopes table: one GROUP BY query, exact integer sums, Decimal money.

Costs are stored as integers of 1e-12 USD (pico-dollars) and summed as integers, so a report over
millions of calls is exact to the last pico-dollar. Money leaves this module only as Decimal (or its
string form); a float never touches it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Literal

from sqlalchemy import case, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from gateway.limits.pricing import picousd_to_usd
from gateway.store.ledger import Ledger
from gateway.store.schema import envelopes

GROUPS = ("tenant", "day", "model", "route", "feature", "template")

# Wide enough for any sum PostgreSQL can return (numeric) without rounding before we choose to.
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_PICO = Decimal(1).scaleb(-12)  # the exact unit: 12 decimal places
_MICRO = Decimal(1).scaleb(-6)  # what the table shows
_TENTH = Decimal("0.1")
_NONE_LABEL = "(none)"


def _per(picousd: int, divisor: int, scale: int = 1) -> Decimal | None:
    if divisor <= 0:
        return None
    usd = _CTX.divide(Decimal(picousd) * scale, Decimal(divisor)).scaleb(-12, _CTX)
    return usd.quantize(_PICO, context=_CTX)


@dataclass(frozen=True)
class CostRow:
    group: dict[str, str | None]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_picousd: int
    cache_saved_tokens: int
    cache_saved_picousd: int
    # Prompt tokens written into the provider's prompt cache (part of prompt_tokens), of which kept
    # for an hour, and their cost (part of cost_picousd).
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_write_picousd: int = 0

    @property
    def total_tokens(self) -> int:
        # cached_tokens are part of prompt_tokens (as providers report them): not added again.
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> Decimal:
        return picousd_to_usd(self.cost_picousd)

    @property
    def cost_per_request_usd(self) -> Decimal | None:
        """None when there were no requests (not a made-up zero)."""
        return _per(self.cost_picousd, self.requests)

    @property
    def cost_per_1k_tokens_usd(self) -> Decimal | None:
        """None when no tokens were counted."""
        return _per(self.cost_picousd, self.total_tokens, 1000)

    @property
    def saved_usd(self) -> Decimal:
        return picousd_to_usd(self.cache_saved_picousd)

    @property
    def cache_write_usd(self) -> Decimal:
        return picousd_to_usd(self.cache_write_picousd)


def totals(rows: Sequence[CostRow]) -> CostRow:
    """One row summing `rows`, with an empty group."""
    return CostRow(
        group={},
        requests=sum(r.requests for r in rows),
        errors=sum(r.errors for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        cached_tokens=sum(r.cached_tokens for r in rows),
        cost_picousd=sum(r.cost_picousd for r in rows),
        cache_saved_tokens=sum(r.cache_saved_tokens for r in rows),
        cache_saved_picousd=sum(r.cache_saved_picousd for r in rows),
        cache_write_tokens=sum(r.cache_write_tokens for r in rows),
        cache_write_1h_tokens=sum(r.cache_write_1h_tokens for r in rows),
        cache_write_picousd=sum(r.cache_write_picousd for r in rows),
    )


# -- the query -------------------------------------------------------------------------------------


def _group_exprs(key: str) -> list[ColumnElement[Any]]:
    c = envelopes.c
    if key == "model":
        return [func.coalesce(c.model_served, c.model_requested).label("g_model")]
    if key == "template":
        # Grouped as two columns and joined in Python: string concatenation differs per dialect.
        return [c.template_id.label("g_template_id"), c.template_version.label("g_template_version")]
    return [c[key].label(f"g_{key}")]


def _group_value(key: str, row: Any) -> str | None:
    if key == "template":
        tid, ver = row.g_template_id, row.g_template_version
        if tid is None:
            return None
        return f"{tid}@{ver}" if ver is not None else str(tid)
    v = getattr(row, f"g_{key}")
    if v is None:
        return None
    return v.isoformat() if isinstance(v, date) else str(v)


def _check_groups(group_by: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for g in group_by:
        if g not in GROUPS:
            raise ValueError(f"unknown group {g!r}: use one or more of {', '.join(GROUPS)}")
        if g not in keys:
            keys.append(g)
    return keys


def _sum(col: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(col), 0)


async def cost_report(
    ledger: Ledger,
    *,
    tenant: str | None = None,
    since: date | None = None,
    until: date | None = None,
    group_by: Sequence[str] = ("tenant",),
) -> list[CostRow]:
    """Sums per group over the envelopes of [since, until] (inclusive UTC days), sorted by group.

    Raises ValueError for an unknown group or since > until, LedgerUnavailable if the ledger is down.
    """
    keys = _check_groups(group_by)
    if since is not None and until is not None and since > until:
        raise ValueError(f"since ({since}) is after until ({until})")
    c = envelopes.c
    gcols = [e for k in keys for e in _group_exprs(k)]
    failed = or_(c.status >= 400, c.error_type.is_not(None))
    q = select(
        *gcols,
        func.count().label("requests"),
        _sum(case((failed, 1), else_=0)).label("errors"),
        _sum(c.prompt_tokens).label("prompt_tokens"),
        _sum(c.completion_tokens).label("completion_tokens"),
        _sum(c.cached_tokens).label("cached_tokens"),
        _sum(c.cost_picousd).label("cost_picousd"),
        _sum(c.cache_saved_tokens).label("cache_saved_tokens"),
        _sum(c.cache_saved_picousd).label("cache_saved_picousd"),
        _sum(c.cache_write_tokens).label("cache_write_tokens"),
        _sum(c.cache_write_1h_tokens).label("cache_write_1h_tokens"),
        _sum(c.cache_write_picousd).label("cache_write_picousd"),
    ).select_from(envelopes)
    if tenant is not None:
        q = q.where(c.tenant == tenant)
    if since is not None:
        q = q.where(c.day >= since)
    if until is not None:
        q = q.where(c.day <= until)
    if gcols:
        q = q.group_by(*gcols)
    async with ledger.read() as conn:
        result = (await conn.execute(q)).all()
    rows = [
        # PostgreSQL sums integers as bigint and bigints as numeric (Decimal): int() takes both.
        CostRow(
            group={k: _group_value(k, r) for k in keys},
            requests=int(r.requests),
            errors=int(r.errors),
            prompt_tokens=int(r.prompt_tokens),
            completion_tokens=int(r.completion_tokens),
            cached_tokens=int(r.cached_tokens),
            cost_picousd=int(r.cost_picousd),
            cache_saved_tokens=int(r.cache_saved_tokens),
            cache_saved_picousd=int(r.cache_saved_picousd),
            cache_write_tokens=int(r.cache_write_tokens),
            cache_write_1h_tokens=int(r.cache_write_1h_tokens),
            cache_write_picousd=int(r.cache_write_picousd),
        )
        for r in result
        if r.requests  # without GROUP BY an empty range still yields one all-zero row
    ]
    # Sorted here, not in SQL: the back ends disagree on where NULLs go.
    rows.sort(key=lambda r: tuple((v is None, v or "") for v in r.group.values()))
    return rows


# -- budgets ---------------------------------------------------------------------------------------

# (limit key, spent key, unit) in the budgets mapping the caller computes.
_BUDGET_KINDS = (
    ("usd_per_month", "spent_usd_month", "usd"),
    ("usd_per_day", "spent_usd_day", "usd"),
    ("tokens_per_month", "spent_tokens_month", "tokens"),
    ("tokens_per_day", "spent_tokens_day", "tokens"),
)


@dataclass(frozen=True)
class BudgetLine:
    tenant: str
    budget: str  # usd_per_month | usd_per_day | tokens_per_month | tokens_per_day
    unit: Literal["usd", "tokens"]
    used: Decimal | int
    limit: Decimal | int | None
    percent: Decimal | None  # used / limit * 100, one decimal; None without a positive limit


def _money(v: Any) -> Decimal:
    # str() first: Decimal(0.1) would carry the float's binary error into the report.
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _tokens(v: Any) -> int:
    return int(v)


def budget_lines(budgets: Mapping[str, Mapping[str, Any]]) -> list[BudgetLine]:
    """One line per tenant and budget kind that has a limit or a spend; tenants in sorted order."""
    out: list[BudgetLine] = []
    for tenant in sorted(budgets):
        b = budgets[tenant]
        for limit_key, spent_key, unit in _BUDGET_KINDS:
            raw_limit, raw_used = b.get(limit_key), b.get(spent_key)
            if raw_limit is None and raw_used is None:
                continue
            conv: Callable[[Any], Decimal | int] = _money if unit == "usd" else _tokens
            used = conv(raw_used if raw_used is not None else 0)
            limit = conv(raw_limit) if raw_limit is not None else None
            percent = None
            if limit is not None and limit > 0:
                percent = _CTX.divide(Decimal(used) * 100, Decimal(limit)).quantize(_TENTH, context=_CTX)
            out.append(BudgetLine(tenant, limit_key, "usd" if unit == "usd" else "tokens", used, limit, percent))
    return out


# -- rendering -------------------------------------------------------------------------------------


def _exact(d: Decimal | None) -> str | None:
    return None if d is None else format(d, "f")


def _micro(d: Decimal | None) -> str:
    return "-" if d is None else format(d.quantize(_MICRO, context=_CTX), "f")


def _row_fields(r: CostRow) -> dict[str, Any]:
    """The exact values of a row (JSON and CSV): integers as ints, money as plain decimal strings."""
    return {
        "requests": r.requests,
        "errors": r.errors,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached_tokens": r.cached_tokens,
        "cache_write_tokens": r.cache_write_tokens,
        "cache_write_1h_tokens": r.cache_write_1h_tokens,
        "total_tokens": r.total_tokens,
        "cost_picousd": r.cost_picousd,
        "cost_usd": _exact(r.cost_usd),
        "cost_per_request_usd": _exact(r.cost_per_request_usd),
        "cost_per_1k_tokens_usd": _exact(r.cost_per_1k_tokens_usd),
        "cache_write_picousd": r.cache_write_picousd,
        "cache_write_usd": _exact(r.cache_write_usd),
        "cache_saved_tokens": r.cache_saved_tokens,
        "cache_saved_picousd": r.cache_saved_picousd,
        "saved_usd": _exact(r.saved_usd),
    }


def _budget_value(line: BudgetLine, v: Decimal | int | None) -> Any:
    if v is None:
        return None
    return format(v, "f") if line.unit == "usd" else int(v)


def _budget_json(line: BudgetLine) -> dict[str, Any]:
    return {
        "tenant": line.tenant,
        "budget": line.budget,
        "unit": line.unit,
        "used": _budget_value(line, line.used),
        "limit": _budget_value(line, line.limit),
        "percent": _exact(line.percent),
    }


def _group_keys(rows: Sequence[CostRow], group_by: Sequence[str] | None) -> list[str]:
    if group_by is not None:
        return _check_groups(group_by)
    return list(rows[0].group) if rows else []


def _render_json(rows: Sequence[CostRow], keys: list[str], lines: list[BudgetLine] | None) -> str:
    doc: dict[str, Any] = {
        "group_by": keys,
        "rows": [{"group": dict(r.group), **_row_fields(r)} for r in rows],
        "totals": _row_fields(totals(rows)),
    }
    if lines is not None:
        doc["budgets"] = [_budget_json(b) for b in lines]
    return json.dumps(doc, indent=2)


def _render_csv(rows: Sequence[CostRow], keys: list[str], lines: list[BudgetLine] | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    value_cols = list(_row_fields(totals([])))
    # Budgets become columns of the rows grouped by tenant (a second table would break parsing).
    per_tenant: dict[str, dict[str, BudgetLine]] = {}
    if lines is not None and "tenant" in keys:
        for line in lines:
            per_tenant.setdefault(line.tenant, {})[line.budget] = line
    budget_cols = [k for k, _, _ in _BUDGET_KINDS] if lines is not None and "tenant" in keys else []
    header = [*keys, *value_cols]
    for k in budget_cols:
        header += [f"{k}_used", f"{k}_limit", f"{k}_percent"]
    w.writerow(header)
    for r in rows:
        fields = _row_fields(r)
        out = [r.group.get(k) or "" for k in keys] + ["" if fields[c] is None else fields[c] for c in value_cols]
        mine = per_tenant.get(r.group.get("tenant") or "", {})
        for k in budget_cols:
            b = mine.get(k)
            if b is None:
                out += ["", "", ""]
            else:
                lim, pct = _budget_value(b, b.limit), _exact(b.percent)
                out += [_budget_value(b, b.used), "" if lim is None else lim, "" if pct is None else pct]
        w.writerow(out)
    return buf.getvalue()


def _align(header: list[str], body: list[list[str]], numeric: list[bool], footer: list[str] | None) -> list[str]:
    all_rows = [header, *body, *([footer] if footer else [])]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "-" * len("  ".join(" " * w for w in widths))
    out = [fmt(header), rule, *(fmt(r) for r in body)]
    if footer:
        out += [rule, fmt(footer)]
    return out


_TABLE_VALUES: tuple[tuple[str, Callable[[CostRow], str]], ...] = (
    ("requests", lambda r: str(r.requests)),
    ("errors", lambda r: str(r.errors)),
    ("prompt_tokens", lambda r: str(r.prompt_tokens)),
    ("completion_tokens", lambda r: str(r.completion_tokens)),
    ("cached_tokens", lambda r: str(r.cached_tokens)),
    ("cache_write_tokens", lambda r: str(r.cache_write_tokens)),
    ("cost_usd", lambda r: _micro(r.cost_usd)),
    ("cache_write_usd", lambda r: _micro(r.cache_write_usd)),  # part of cost_usd
    ("usd_per_request", lambda r: _micro(r.cost_per_request_usd)),
    ("usd_per_1k_tokens", lambda r: _micro(r.cost_per_1k_tokens_usd)),
    ("saved_tokens", lambda r: str(r.cache_saved_tokens)),
    ("saved_usd", lambda r: _micro(r.saved_usd)),
)


def _render_table(rows: Sequence[CostRow], keys: list[str], lines: list[BudgetLine] | None) -> str:
    # Without group columns, a label column still tells the data line from the totals line.
    label_cols = keys or ["scope"]
    header = [*label_cols, *(name for name, _ in _TABLE_VALUES)]
    numeric = [False] * len(label_cols) + [True] * len(_TABLE_VALUES)

    def cells(r: CostRow, labels: list[str]) -> list[str]:
        return [*labels, *(get(r) for _, get in _TABLE_VALUES)]

    body = [
        cells(r, [v if v is not None else _NONE_LABEL for v in r.group.values()] if keys else ["all"]) for r in rows
    ]
    footer = cells(totals(rows), ["TOTAL"] + [""] * (len(label_cols) - 1))
    out = _align(header, body, numeric, footer)
    if lines:
        out += ["", "Spend against budget"]
        bhead = ["tenant", "budget", "used", "limit", "percent"]
        bbody = []
        for b in lines:
            show: Callable[[Decimal | int | None], str] = (
                (lambda v: "-" if v is None else _micro(Decimal(v)))
                if b.unit == "usd"
                else (lambda v: "-" if v is None else str(v))
            )
            pct = "-" if b.percent is None else f"{b.percent}%"
            bbody.append([b.tenant, b.budget, show(b.used), show(b.limit), pct])
        out += _align(bhead, bbody, [False, False, True, True, True], None)
    return "\n".join(out) + "\n"


def render(
    rows: list[CostRow],
    fmt: Literal["table", "csv", "json"],
    *,
    budgets: Mapping[str, Mapping[str, Any]] | None = None,
    group_by: Sequence[str] | None = None,
) -> str:
    """The report as text. `group_by` names the group columns when `rows` may be empty.

    table: aligned columns, dollars to 6 decimals, a TOTAL line, then "Spend against budget".
    csv: a header and one line per row (no totals line), exact values; budgets as columns of
        rows grouped by tenant.
    json: {"group_by", "rows": [{"group": {...}, ...}], "totals": {...}, "budgets": [...]}; money
        as exact decimal strings beside the integer cost_picousd.
    """
    keys = _group_keys(rows, group_by)
    lines = budget_lines(budgets) if budgets is not None else None
    if fmt == "table":
        return _render_table(rows, keys, lines)
    if fmt == "csv":
        return _render_csv(rows, keys, lines)
    if fmt == "json":
        return _render_json(rows, keys, lines)
    raise ValueError(f"unknown format {fmt!r}: use table, csv or json")
