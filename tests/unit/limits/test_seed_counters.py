"""The counters seeded from the ledger are the limits plan's period counters, named as it names them."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.limits.plan import build_plan
from gateway.limits.seed import Scope, SeedTarget, Spend, budget_counters
from gateway.settings import load_settings


def test_every_period_counter_of_every_plan_is_seeded_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "config" / "gateway.yaml").write_text(yaml.safe_dump({
        "providers": {"m": {"kind": "mock"}},
        "routes": {"a": {"targets": [{"provider": "m", "model": "x"}], "budget": {"usd_per_day": 3}},
                   "b": {"targets": [{"provider": "m", "model": "x"}]}}}))
    (tmp_path / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {
        "acme": {"budgets": {"tokens_per_day": 1, "usd_per_month": 2}, "rate_limits": {"requests_per_minute": 5},
                 "keys": {"env:K": {"budgets": {"tokens_per_month": 3}}, "key_r": {"rate_limits": {
                     "tokens_per_minute": 9}}},
                 "features": {"f": {"budgets": {"usd_per_day": 1}}}},
        "free": {}}}))
    settings = load_settings(tmp_path / "config" / "gateway.yaml", env={})
    seeded = {(t.hash_tag, t.key): t for t in budget_counters(settings)}
    planned = set()
    for tenant in ("acme", "free"):
        for key in ("env:K", "key_r", None):
            for feature in ("f", None):
                for route in ("a", "b"):
                    plan = build_plan(settings, tenant, key, feature, route, settings.routes[route])
                    planned |= {(s.hash_tag, s.key) for g in plan.groups for s in g.specs if s.kind == "period"}
    assert planned == set(seeded)
    assert seeded[("t:acme", "tenant:acme:key:env:K:tokens_per_month")].scope == Scope("key_id", "acme", "env:K")
    assert seeded[("t:acme", "tenant:acme:feature:f:usd_per_day")].scope == Scope("feature", "acme", "f")
    assert seeded[("r:a", "route:a:usd_per_day")].scope == Scope("route", None, "a")


def test_spend_picks_the_counter_s_period_and_unit() -> None:
    spend = Spend(day_tokens=1, day_usd=2, month_tokens=3, month_usd=4)
    scope = Scope("tenant", "a", "a")
    assert [spend.of(SeedTarget("t", "k", p, u, scope)) for p, u in
            (("day", "tokens"), ("day", "usd"), ("month", "tokens"), ("month", "usd"))] == [1, 2, 3, 4]
