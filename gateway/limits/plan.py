"""What the config fixes about a request's limits, worked out once per (tenant, key, feature, route).

Which counters a request draws on, their keys, limits and units, and the targets its prompt is
estimated for depend only on the config; the stage used to rebuild them (and two settings models)
on every request. A plan is built on first use and kept: the keys of the cache come from the
config (keys and features without limits of their own share their tenant's plan), so it stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Literal

from gateway.limits.pricing import usd_to_picousd
from gateway.settings import BudgetSettings, RateLimitSettings, RouteSettings, Settings
from gateway.store.state.base import MAX_PERIOD_UNITS, MAX_WINDOW_UNITS, Bucket, CheckedBuckets, check_buckets
from gateway.store.state.memory import Lane

_new_tuple = tuple.__new__
_UNIT_INDEX = {"tokens": 0, "usd": 1, "requests": 2}

Unit = Literal["tokens", "usd", "requests"]
Kind = Literal["period", "window"]
Period = Literal["day", "month", "minute"]


@dataclass(frozen=True, slots=True)
class CounterSpec:
    key: str
    hash_tag: str
    limit: int
    kind: Kind
    period: Period
    name: str
    unit: Unit
    bound: int  # an absurd request (max_tokens of billions) is refused as over the limit, never overflows

    def bucket(self, tokens: int, usd: int) -> Bucket:
        amount = tokens if self.unit == "tokens" else usd if self.unit == "usd" else 1
        # Clamped into [0, bound]: what CheckedBuckets promises the store.
        return Bucket(self.key, self.hash_tag, self.limit, self.kind, self.period,
                      self.bound if amount > self.bound else amount if amount > 0 else 0, self.name)


# OpenAI's x-ratelimit-* headers: (unit of the window counter, header names), each reporting the tightest window.
_RATE_HEADERS = (
    ("requests_per_minute", (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests",
                             b"x-ratelimit-reset-requests")),
    ("tokens_per_minute", (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens",
                           b"x-ratelimit-reset-tokens")),
)


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The counters of one atomic reservation, and what is derived from them once."""

    specs: tuple[CounterSpec, ...]
    names: tuple[str, ...]
    units: tuple[Unit, ...]
    bounds: tuple[int, ...]
    # Header names and the indexes of the counters the tightest of which they report.
    header_windows: tuple[tuple[tuple[bytes, bytes, bytes], tuple[int, ...]], ...]
    limit_values: tuple[bytes, ...]  # each counter's limit, as its x-ratelimit-limit-* header says it
    lane: Lane  # the memory store's view of these counters (unused with another store)
    # (tokens, usd, 1) -> each counter's units, in one C call; and all zeros (a release).
    pick: Callable[[tuple[int, int, int]], tuple[int, ...]]
    nothing: tuple[int, ...]

    @classmethod
    def of(cls, specs: list[CounterSpec]) -> GroupPlan:
        empty = [s.bucket(0, 0) for s in specs]
        check_buckets(empty)  # once, so the store need not on every request
        windows = tuple((names, idx) for suffix, names in _RATE_HEADERS
                        if (idx := tuple(i for i, s in enumerate(specs) if s.name.endswith(suffix))))
        index = tuple(_UNIT_INDEX[s.unit] for s in specs)
        pick = itemgetter(*index) if len(index) > 1 else lambda units: (units[index[0]],)
        return cls(tuple(specs), tuple(s.name for s in specs), tuple(s.unit for s in specs),
                   tuple(s.bound for s in specs), windows, tuple(b"%d" % s.limit for s in specs),
                   Lane(CheckedBuckets(empty)), pick, (0,) * len(specs))

    def buckets(self, tokens: int, usd: int) -> CheckedBuckets:
        # CounterSpec.bucket inlined, and each Bucket made without NamedTuple's Python-level __new__:
        # this runs for every counter of every request.
        return CheckedBuckets([
            _new_tuple(Bucket, (s.key, s.hash_tag, s.limit, s.kind, s.period,
                                s.bound if (a := tokens if s.unit == "tokens" else usd if s.unit == "usd" else 1)
                                > s.bound else a if a > 0 else 0, s.name))
            for s in self.specs])

    def actual(self, tokens: int, usd: int) -> dict[str, int]:
        return {name: tokens if unit == "tokens" else usd if unit == "usd" else 1
                for name, unit in zip(self.names, self.units, strict=True)}

    def spent(self, tokens: int, usd: int) -> tuple[int, ...]:
        """What each counter holds or is settled at, in order, clamped like `buckets` (a provider may
        report anything)."""
        if 0 <= tokens <= MAX_WINDOW_UNITS and 0 <= usd <= MAX_WINDOW_UNITS:  # within every bound
            return self.pick((tokens, usd, 1))
        return tuple(b if (a := tokens if unit == "tokens" else usd if unit == "usd" else 1) > b else a if a > 0 else 0
                     for unit, b in zip(self.units, self.bounds, strict=True))


@dataclass(frozen=True, slots=True)
class LimitsPlan:
    targets: tuple[tuple[str, str], ...]  # (provider kind, model) of every target the prompt may reach
    # (input, output) pico-dollars per token at every target: the reservation prices the dearest.
    prices: tuple[tuple[int, int], ...]
    groups: tuple[GroupPlan, ...]  # one atomic reservation each (tenant's, route's)
    bounded: bool  # some counter counts tokens or money: completions need a max_tokens

    @property
    def empty(self) -> bool:
        return not self.groups


def _specs(prefix: str, tag: str, budgets: BudgetSettings | None, rates: RateLimitSettings | None,
           route_budget: tuple[int | None, int | None] | None = None) -> list[CounterSpec]:
    out: list[CounterSpec] = []

    def add(name: str, limit: int | None, kind: Kind, period: Period, unit: Unit) -> None:
        if limit is not None:
            out.append(CounterSpec(key=f"{prefix}:{name}", hash_tag=tag, limit=limit, kind=kind, period=period,
                                   name=f"{prefix}.{name}", unit=unit,
                                   bound=MAX_WINDOW_UNITS if kind == "window" else MAX_PERIOD_UNITS))

    if budgets is not None:
        add("tokens_per_day", budgets.tokens_per_day, "period", "day", "tokens")
        add("tokens_per_month", budgets.tokens_per_month, "period", "month", "tokens")
        add("usd_per_day", None if budgets.usd_per_day is None else usd_to_picousd(budgets.usd_per_day),
            "period", "day", "usd")
        add("usd_per_month", None if budgets.usd_per_month is None else usd_to_picousd(budgets.usd_per_month),
            "period", "month", "usd")
    if rates is not None:
        add("requests_per_minute", rates.requests_per_minute, "window", "minute", "requests")
        add("tokens_per_minute", rates.tokens_per_minute, "window", "minute", "tokens")
    if route_budget is not None:
        tokens, usd = route_budget
        add("tokens_per_day", tokens, "period", "day", "tokens")
        add("usd_per_day", usd, "period", "day", "usd")
    return out


def build_plan(settings: Settings, tenant: str | None, key_id: str | None, feature: str | None,
               route_name: str, route: RouteSettings) -> LimitsPlan:
    targets = tuple((settings.providers[t.provider].kind, t.model) for t in route.targets)
    tenant_settings = settings.tenants.get(tenant or "")
    tenant_specs: list[CounterSpec] = []
    if tenant_settings is not None:
        tag = f"t:{tenant}"
        tenant_specs += _specs(f"tenant:{tenant}", tag, tenant_settings.budgets, tenant_settings.rate_limits)
        if key_id is not None and key_id in tenant_settings.keys:
            scope = tenant_settings.keys[key_id]
            tenant_specs += _specs(f"tenant:{tenant}:key:{key_id}", tag, scope.budgets, scope.rate_limits)
        if feature is not None and feature in tenant_settings.features:
            scope = tenant_settings.features[feature]
            tenant_specs += _specs(f"tenant:{tenant}:feature:{feature}", tag, scope.budgets, scope.rate_limits)
    # A route's own budget counts for every tenant; it is only enforced on requests of a known tenant.
    route_specs = _specs(f"route:{route_name}", f"r:{route_name}", None, None, (
        route.budget.tokens_per_day,
        None if route.budget.usd_per_day is None else usd_to_picousd(route.budget.usd_per_day),
    )) if tenant_settings is not None else []
    groups = tuple(GroupPlan.of(g) for g in (tenant_specs, route_specs) if g)
    pico = [settings.pricing.pico_for(t.provider, t.model) for t in route.targets]
    # A prompt token may be billed as input, cached input or a cache write (Anthropic's cost more
    # than input): the bound prices every prompt token at the dearest of them for that target.
    prices = tuple((max(p[0], p[1], p[3], p[4]), p[2]) if p is not None else (0, 0) for p in pico)
    return LimitsPlan(targets=targets, prices=prices, groups=groups,
                      bounded=any(s.unit != "requests" for g in groups for s in g.specs))


class PlanCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._plans: dict[tuple[str | None, str | None, str | None, str], LimitsPlan] = {}

    def get(self, tenant: str | None, key_id: str | None, feature: str | None, route_name: str,
            route: RouteSettings) -> LimitsPlan:
        tenant_settings = self.settings.tenants.get(tenant or "")
        # Keys and features without limits of their own share the tenant's plan: the cache stays config-sized.
        if tenant_settings is None or key_id not in tenant_settings.keys:
            key_id = None
        if tenant_settings is None or feature not in tenant_settings.features:
            feature = None
        cache_key = (tenant, key_id, feature, route_name)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = build_plan(self.settings, tenant, key_id, feature, route_name, route)
        return plan
