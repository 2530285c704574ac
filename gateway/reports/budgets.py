"""The cost report as the CLI and the admin API give it: rows from the ledger, plus spend
against each tenant's budgets for the current UTC day and month."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from gateway.limits.pricing import picousd_to_usd
from gateway.reports.costs import GROUPS, cost_report, render
from gateway.settings import Settings
from gateway.store.ledger import Ledger


async def budget_status(ledger: Ledger, settings: Settings, tenant: str | None) -> dict[str, dict[str, Any]]:
    """tenant -> limits and what was spent against them (today and this month, from the ledger)."""
    today = datetime.now(UTC).date()
    month_start = today.replace(day=1)
    names = [tenant] if tenant else sorted(settings.tenants)
    out: dict[str, dict[str, Any]] = {}
    rows_month = {r.group["tenant"]: r for r in await cost_report(ledger, tenant=tenant, since=month_start,
                                                                 group_by=("tenant",))}
    rows_day = {r.group["tenant"]: r for r in await cost_report(ledger, tenant=tenant, since=today,
                                                               group_by=("tenant",))}
    for name in names:
        t = settings.tenants.get(name)
        if t is None:
            continue
        b = t.budgets
        if all(v is None for v in (b.tokens_per_day, b.tokens_per_month, b.usd_per_day, b.usd_per_month)):
            continue
        month, day = rows_month.get(name), rows_day.get(name)
        out[name] = {
            "usd_per_day": b.usd_per_day, "usd_per_month": b.usd_per_month,
            "tokens_per_day": b.tokens_per_day, "tokens_per_month": b.tokens_per_month,
            "spent_usd_day": picousd_to_usd(day.cost_picousd) if day else Decimal(0),
            "spent_usd_month": picousd_to_usd(month.cost_picousd) if month else Decimal(0),
            "spent_tokens_day": (day.prompt_tokens + day.completion_tokens) if day else 0,
            "spent_tokens_month": (month.prompt_tokens + month.completion_tokens) if month else 0,
        }
    return out


async def report_text(ledger: Ledger, settings: Settings, *, tenant: str | None, since: date | None,
                      until: date | None, group_by: Sequence[str], fmt: str) -> str:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown or not group_by:
        raise ValueError(f"--group-by takes a comma list of {', '.join(GROUPS)} (got {', '.join(unknown) or 'none'})")
    rows = await cost_report(ledger, tenant=tenant, since=since, until=until, group_by=group_by)
    budgets = await budget_status(ledger, settings, tenant)
    return render(rows, fmt, budgets=budgets, group_by=group_by)  # type: ignore[arg-type]
