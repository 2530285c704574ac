"""Budget counters seeded from the ledger: what the current UTC day and month already spent.

The state stores forget: the memory store at every restart, Redis when it restarts without
persistence or is flushed. The ledger does not: every call has an envelope with its tokens (in +
out) and its exact cost in pico-dollars, the figures its budget counters were settled at (a failed
call: 0). So the day and month counters of every configured budget (tenant, key, feature, route;
tokens and USD) are seeded from the envelopes of the current day and month:

- memory state: once at start-up, after the envelope writer has replayed the journals of dead
  processes into the ledger (a replay that failed stops start-up: seeding without it would forget
  that spend);
- Redis: on demand. A period counter that was seeded carries a marker (see redis.py); a reserve
  that finds one without it (a new period, or a Redis that lost its data) asks this module for the
  figures (one ledger query per group and period, shared by every request waiting for it), and one
  atomic script seeds each counter unless another replica did first. The hot path pays one marker
  check inside the reserve script, never a ledger query.

Per-minute windows start empty. A counter becomes the larger of what it holds and what the ledger
says (never the sum), so seeding twice counts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import func, select

from gateway.limits.plan import _specs
from gateway.limits.pricing import usd_to_picousd
from gateway.settings import Settings
from gateway.store.ledger import Ledger, LedgerUnavailable
from gateway.store.schema import envelopes
from gateway.store.state.base import Bucket, SeedValue, StateStore, StateUnavailable
from gateway.store.state.memory import MemoryStateStore

_log = logging.getLogger("gateway.limits")

# After a failed ledger query, seeding is not tried again for this long: requests that need it are
# refused (or served unchecked) per limits.on_state_error at once instead of each waiting on the ledger.
RETRY_AFTER_FAILURE_S = 1.0
# A ledger answer serves the seedings asked for this long after it came (long enough for the reserves
# that were on their way to Redis when it came; short, as it grows stale with every call served).
REUSE_S = 0.1
# Requests wait for a seeding at most this long (writing this process's queued envelopes, then the query).
SEED_TIMEOUT_S = 5.0

Column = Literal["tenant", "key_id", "feature", "route"]


class Scope(NamedTuple):
    """Whose envelopes a counter counts: a tenant's, one key's or feature's of a tenant, a route's."""

    column: Column
    tenant: str | None  # None for a route (it counts the calls of every configured tenant)
    name: str


class SeedTarget(NamedTuple):
    hash_tag: str
    key: str
    period: Literal["day", "month"]
    unit: Literal["tokens", "usd"]
    scope: Scope


class Spend(NamedTuple):
    day_tokens: int = 0
    day_usd: int = 0  # pico-dollars
    month_tokens: int = 0
    month_usd: int = 0

    def of(self, target: SeedTarget) -> int:
        if target.period == "day":
            return self.day_tokens if target.unit == "tokens" else self.day_usd
        return self.month_tokens if target.unit == "tokens" else self.month_usd


def budget_counters(settings: Settings) -> list[SeedTarget]:
    """Every period counter the config defines, named as the limits plan names them."""
    out: list[SeedTarget] = []

    def add(scope: Scope, specs: Iterable[Any]) -> None:
        for s in specs:
            if s.kind == "period":
                out.append(SeedTarget(s.hash_tag, s.key, s.period, s.unit, scope))

    for tenant, t in settings.tenants.items():
        tag = f"t:{tenant}"
        add(Scope("tenant", tenant, tenant), _specs(f"tenant:{tenant}", tag, t.budgets, None))
        for key_id, scope in t.keys.items():
            add(Scope("key_id", tenant, key_id), _specs(f"tenant:{tenant}:key:{key_id}", tag, scope.budgets, None))
        for feature, scope in t.features.items():
            add(Scope("feature", tenant, feature),
                _specs(f"tenant:{tenant}:feature:{feature}", tag, scope.budgets, None))
    for name, route in settings.routes.items():
        usd = None if route.budget.usd_per_day is None else usd_to_picousd(route.budget.usd_per_day)
        add(Scope("route", None, name), _specs(f"route:{name}", f"r:{name}", None, None,
                                               (route.budget.tokens_per_day, usd)))
    return out


def _utc_day(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


async def ledger_spend(ledger: Ledger, scopes: Collection[Scope], tenants: Collection[str],
                       today: date, *, month: bool = True) -> dict[Scope, Spend]:
    """Tokens (in + out) and pico-dollars of the envelopes of `today` and (unless not `month`: then
    its month figures are 0) of its month, per scope.

    One grouped query per kind of scope, filtered to the scopes asked for: a client's feature
    header can take any value, so nothing is grouped over values the config does not name."""
    c = envelopes.c
    tokens = func.coalesce(func.sum(c.prompt_tokens + c.completion_tokens), 0)
    usd = func.coalesce(func.sum(c.cost_picousd), 0)
    # Only the day: at midnight every day counter is new while the month's are not, and a month of
    # envelopes need not be read again for them.
    in_month = (c.day >= (today.replace(day=1) if month else today), c.day <= today)
    sums: dict[Scope, list[int]] = {s: [0, 0, 0, 0] for s in scopes}
    queries = []
    by_tenant = sorted({s.name for s in scopes if s.column == "tenant"})
    if by_tenant:
        queries.append(("tenant", select(c.tenant, c.tenant, c.day, tokens, usd)
                        .where(*in_month, c.tenant.in_(by_tenant)).group_by(c.tenant, c.day)))
    for column in ("key_id", "feature"):
        wanted = [s for s in scopes if s.column == column]
        if wanted:
            col = c[column]
            queries.append((column, select(c.tenant, col, c.day, tokens, usd)
                            .where(*in_month, c.tenant.in_(sorted({s.tenant for s in wanted})),
                                   col.in_(sorted({s.name for s in wanted})))
                            .group_by(c.tenant, col, c.day)))
    routes = sorted({s.name for s in scopes if s.column == "route"})
    if routes and tenants:
        # A route's budget only counts calls of configured tenants (build_plan): so does its seed.
        queries.append(("route", select(c.route, c.route, c.day, tokens, usd)
                        .where(*in_month, c.route.in_(routes), c.tenant.in_(sorted(tenants)))
                        .group_by(c.route, c.day)))
    async with ledger.read() as conn:
        for column, query in queries:
            for tenant, name, day, n_tokens, n_usd in (await conn.execute(query)).all():
                scope = Scope(column, None if column == "route" else tenant, name)  # type: ignore[arg-type]
                acc = sums.get(scope)
                if acc is None:  # a (tenant, key) pair the config does not have
                    continue
                if isinstance(day, str):
                    day = date.fromisoformat(day)
                if month:
                    acc[2] += int(n_tokens)
                    acc[3] += int(n_usd)
                if day == today:
                    acc[0] += int(n_tokens)
                    acc[1] += int(n_usd)
    return {s: Spend(*v) for s, v in sums.items()}


async def seed_memory(store: MemoryStateStore, settings: Settings, ledger: Ledger, now: float | None = None) -> int:
    """Seed every configured budget's current day and month counter; returns how many were."""
    targets = budget_counters(settings)
    if not targets:
        return 0
    now = time.time() if now is None else now
    spend = await ledger_spend(ledger, {t.scope for t in targets}, settings.tenants.keys(), _utc_day(now))
    store.seed([SeedValue(t.hash_tag, t.key, t.period, spend[t.scope].of(t)) for t in targets], now)
    return len(targets)


_Ident = tuple[frozenset[Scope], date, bool]  # (scopes, day, whether month figures are wanted)


class LedgerSeeder:
    """The Redis store's seeder: (hash tag, buckets, now) -> what each counter already spent."""

    def __init__(self, settings: Settings, ledger: Ledger, *, before_query: Callable[[], Awaitable[None]] | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
        self._ledger = ledger
        self._targets = {(t.hash_tag, t.key): t for t in budget_counters(settings)}
        self._tenants = frozenset(settings.tenants)
        self._before_query = before_query  # this process's envelopes still queued go to the ledger first
        self._ready = ready  # False while journaled envelopes wait to be replayed into the ledger
        self._pending: dict[_Ident, asyncio.Task[dict[Scope, Spend]]] = {}
        self._failed_until = 0.0
        self.queries = 0  # ledger queries made (for tests)

    async def __call__(self, tag: str, buckets: Sequence[Bucket], now: float) -> list[int]:
        targets = [self._targets.get((tag, b.key)) for b in buckets]
        scopes = frozenset(t.scope for t in targets if t is not None)
        if not scopes:
            return [0] * len(buckets)
        if time.monotonic() < self._failed_until:
            raise StateUnavailable("budget counters cannot be seeded: the ledger was unreachable a moment ago")
        ident = (scopes, _utc_day(now), any(t.period == "month" for t in targets if t is not None))
        task = self._pending.get(ident)
        if task is None:
            # One query for every request that needs it; shielded, so one leaving does not cancel it for all.
            # Its answer is kept a moment: a reserve that found the counter unseeded just before the seeding
            # landed asks again, and the seeding script then leaves the counter as it is.
            task = self._pending[ident] = asyncio.ensure_future(self._query(scopes, ident[1], ident[2]))
            task.add_done_callback(lambda done: asyncio.get_running_loop().call_later(
                REUSE_S, self._forget, ident, done))
        spend = await asyncio.shield(task)
        return [spend[t.scope].of(t) if t is not None else 0 for t in targets]

    def _forget(self, ident: _Ident, task: asyncio.Task[dict[Scope, Spend]]) -> None:
        if self._pending.get(ident) is task:
            del self._pending[ident]

    async def _query(self, scopes: frozenset[Scope], today: date, month: bool) -> dict[Scope, Spend]:
        try:
            async with asyncio.timeout(SEED_TIMEOUT_S):
                if self._before_query is not None:
                    await self._before_query()
                if self._ready is not None and not self._ready():
                    raise LedgerUnavailable("journaled envelopes are not replayed into the ledger yet")
                self.queries += 1
                spend = await ledger_spend(self._ledger, scopes, self._tenants, today, month=month)
        except (LedgerUnavailable, TimeoutError) as e:
            self._failed_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            _log.error("budget counters not seeded from the ledger", extra={"fields": {"error": str(e)[:300]}})
            raise StateUnavailable(f"budget counters cannot be seeded: {e or 'the ledger timed out'}") from e
        _log.info("budget counters seeded from the ledger", extra={"fields": {"scopes": len(scopes)}})
        return spend


async def start_seeding(store: StateStore, settings: Settings, ledger: Ledger, *,
                        before_query: Callable[[], Awaitable[None]] | None = None,
                        replayed: Callable[[], bool] | None = None) -> None:
    """At start-up, once the envelope writer has replayed the journals (`replayed()` says it did):
    seed the memory store now, or give the Redis store its seeder. Raises LedgerUnavailable when the
    memory store cannot be seeded (starting would forget spend)."""
    if isinstance(store, MemoryStateStore):
        if not budget_counters(settings):
            return
        if replayed is not None and not replayed():
            raise LedgerUnavailable("journaled envelopes could not be replayed into the ledger")
        count = await seed_memory(store, settings, ledger)
        _log.info("budget counters seeded from the ledger", extra={"fields": {"counters": count}})
        return
    from gateway.store.state.redis import RedisStateStore  # not loaded by memory-state processes

    if isinstance(store, RedisStateStore) and budget_counters(settings):
        store.seeder = LedgerSeeder(settings, ledger, before_query=before_query, ready=replayed)
