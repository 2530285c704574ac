"""Budget counters seeded from the ledger's envelopes, on SQLite and PostgreSQL: exactly what the
budgets count (tokens in + out, exact pico-dollars), per tenant, key, feature and route, day and month."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.limits.plan import build_plan
from gateway.limits.seed import LedgerSeeder, Scope, Spend, budget_counters, ledger_spend, seed_memory
from gateway.runtime import Gateway
from gateway.settings import Settings, load_settings
from gateway.store.envelopes import EnvelopeWriter
from gateway.store.ledger import Ledger, LedgerUnavailable
from gateway.store.state.base import StateUnavailable
from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.redis import RedisStateStore
from tests.integration.store_state.conftest import REDIS_URL, delete_prefix, require_redis
from tests.support.processes import free_port

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC).timestamp()
TODAY = datetime(2026, 11, 15, 0, 0, 1, tzinfo=UTC)
BIG = 3_002_399_751_580_331  # past 2**53: a float sum would be wrong


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "policies").mkdir(exist_ok=True)
    config = {"providers": {"m": {"kind": "mock"}},
              "routes": {"chat": {"targets": [{"provider": "m", "model": "x"}],
                                  "budget": {"tokens_per_day": 10**9, "usd_per_day": 100000}},
                         "other": {"targets": [{"provider": "m", "model": "x"}]}}}
    tenants = {"tenants": {
        "acme": {"budgets": {"tokens_per_day": 10**9, "tokens_per_month": 10**9, "usd_per_day": 100000,
                             "usd_per_month": 100000},
                 "rate_limits": {"requests_per_minute": 1000},
                 "keys": {"key_a": {"budgets": {"tokens_per_day": 10**9, "usd_per_month": 100000}}},
                 "features": {"summarize": {"budgets": {"tokens_per_month": 10**9}}}},
        "beta": {},  # no budget of its own; its calls still count for the route's
    }}
    (tmp_path / "config" / "gateway.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "policies" / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    return load_settings(tmp_path / "config" / "gateway.yaml", env={})


def _env(i: int, at: datetime, tenant: str, *, key: str | None = "key_b", feature: str | None = None,
         route: str = "chat", tokens: tuple[int, int] = (10, 5), cost: int = 1_000_003,
         status: int = 200) -> dict[str, Any]:
    return {"request_id": f"r{i}", "created_at": at, "tenant": tenant, "key_id": key, "feature": feature,
            "route": route, "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cost_picousd": cost,
            "status": status}


def _envelopes() -> list[dict[str, Any]]:
    earlier = TODAY - timedelta(days=3)
    last_month = TODAY - timedelta(days=20)  # 2026-10-26
    return [
        _env(1, TODAY, "acme"),
        _env(2, TODAY + timedelta(hours=5), "acme", key="key_a", feature="summarize", tokens=(100, 50), cost=BIG),
        _env(3, earlier, "acme", key="key_a", tokens=(7, 3), cost=BIG + 1),
        _env(4, earlier, "acme", feature="summarize", route="other", tokens=(1, 1), cost=2),
        _env(5, last_month, "acme", key="key_a", feature="summarize", tokens=(10**6, 1), cost=10**15),
        # a failed call: nothing served, nothing counted
        _env(6, TODAY, "acme", key="key_a", tokens=(0, 0), cost=0, status=502),
        # a feature and a key the config does not name: only the tenant's counters
        _env(7, TODAY, "acme", key="key_zzz", feature="free-for-all", tokens=(20, 20), cost=40),
        _env(8, TODAY, "beta", key="key_a", feature="summarize", tokens=(30, 3), cost=300),
        # a tenant the config no longer has: not this gateway's route budget
        _env(9, TODAY, "ghost", tokens=(500, 500), cost=5000),
    ]


async def _fill(ledger: Ledger, tmp_path: Path) -> None:
    writer = EnvelopeWriter(ledger, tmp_path / "journal", batch_size=4)
    await writer.start()
    for e in _envelopes():
        writer.submit(e)
    await writer.aclose()


async def _usage(store: MemoryStateStore, settings: Settings, tenant: str, key: str | None, feature: str | None,
                 route: str) -> dict[str, int]:
    plan = build_plan(settings, tenant, key, feature, route, settings.routes[route])
    out: dict[str, int] = {}
    for group in plan.groups:
        out.update(await store.usage(group.buckets(0, 0), now=NOW))
    return out


async def test_memory_counters_start_at_what_the_ledger_says(ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    await _fill(ledger, tmp_path)
    store = MemoryStateStore()
    assert await seed_memory(store, settings, ledger, now=NOW) == len(budget_counters(settings)) == 9
    usage = await _usage(store, settings, "acme", "key_a", "summarize", "chat")
    assert usage == {
        # tenant acme: today 1, 2, 6, 7; this month also 3, 4 (not 5: last month)
        "tenant:acme.tokens_per_day": 15 + 150 + 0 + 40,
        "tenant:acme.tokens_per_month": 15 + 150 + 40 + 10 + 2,
        "tenant:acme.usd_per_day": 1_000_003 + BIG + 40,
        "tenant:acme.usd_per_month": 1_000_003 + BIG + 40 + BIG + 1 + 2,
        "tenant:acme.requests_per_minute": 0,  # windows start empty
        # key_a of acme: 2, 6 today; 3 this month
        "tenant:acme:key:key_a.tokens_per_day": 150,
        "tenant:acme:key:key_a.usd_per_month": BIG + BIG + 1,
        # summarize of acme: 2, 4 this month (not beta's 8)
        "tenant:acme:feature:summarize.tokens_per_month": 150 + 2,
        # route chat today: every configured tenant's calls on it (1, 2, 6, 7, 8), not ghost's
        "route:chat.tokens_per_day": 15 + 150 + 40 + 33,
        "route:chat.usd_per_day": 1_000_003 + BIG + 40 + 300,
    }
    # beta's counters: no budget of its own; the route's as above
    assert await _usage(store, settings, "beta", None, None, "chat") == {
        "route:chat.tokens_per_day": 238, "route:chat.usd_per_day": 1_000_003 + BIG + 340}


async def test_seeding_again_counts_nothing_twice(ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    await _fill(ledger, tmp_path)
    store = MemoryStateStore()
    await seed_memory(store, settings, ledger, now=NOW)
    await seed_memory(store, settings, ledger, now=NOW)
    usage = await _usage(store, settings, "acme", None, None, "chat")
    assert usage["tenant:acme.tokens_per_day"] == 205 and usage["route:chat.tokens_per_day"] == 238


async def test_an_empty_ledger_and_a_config_without_budgets(ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = MemoryStateStore()
    await seed_memory(store, settings, ledger, now=NOW)
    assert set((await _usage(store, settings, "acme", "key_a", None, "chat")).values()) == {0}
    (tmp_path / "policies" / "tenants.yaml").write_text("tenants: {acme: {}}\n")
    (tmp_path / "config" / "gateway.yaml").write_text(
        "providers: {m: {kind: mock}}\nroutes: {chat: {targets: [{provider: m, model: x}]}}\n")
    bare = load_settings(tmp_path / "config" / "gateway.yaml", env={})
    assert budget_counters(bare) == [] and await seed_memory(MemoryStateStore(), bare, ledger, now=NOW) == 0


async def test_redis_seeder_asks_the_ledger_once_for_many_requests(ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    await _fill(ledger, tmp_path)
    require_redis()
    prefix = f"gwtest:{os.urandom(6).hex()}:"
    store = RedisStateStore(REDIS_URL, prefix=prefix)
    try:
        store.seeder = seeder = LedgerSeeder(settings, ledger)
        plan = build_plan(settings, "acme", "key_a", "summarize", "chat", settings.routes["chat"])
        tenant_group, route_group = (g.buckets(10, 0) for g in plan.groups)
        decisions = await asyncio.gather(*(store.reserve(f"r{i}", tenant_group, 60, now=NOW) for i in range(30)))
        assert all(d.ok for d in decisions)
        # one query shared by the 30 (a reserve slower than REUSE_S on a loaded machine may ask again)
        assert seeder.queries <= 2
        queries = seeder.queries
        usage = await store.usage(tenant_group, now=NOW)
        assert usage["tenant:acme.tokens_per_day"] == 205 + 30 * 10
        assert usage["tenant:acme:key:key_a.usd_per_month"] == 2 * BIG + 1
        assert (await store.reserve("route", route_group, 60, now=NOW)).ok  # the route's group: a query of its own
        assert seeder.queries == queries + 1
        assert (await store.usage(route_group, now=NOW))["route:chat.tokens_per_day"] == 248
    finally:
        await store.aclose()
        await delete_prefix(prefix)


async def test_a_ledger_that_cannot_answer_fails_the_seeding_and_is_not_asked_again_at_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    require_redis()
    prefix = f"gwtest:{os.urandom(6).hex()}:"
    store = RedisStateStore(REDIS_URL, prefix=prefix)
    down = Ledger.from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        store.seeder = seeder = LedgerSeeder(settings, down)
        plan = build_plan(settings, "acme", None, None, "chat", settings.routes["chat"])
        group = plan.groups[0].buckets(10, 0)
        for _ in range(3):
            with pytest.raises(StateUnavailable, match="cannot be seeded"):
                await store.reserve("r", group, 60, now=NOW)
        assert seeder.queries == 1
        assert (await store.usage(group, now=NOW))["tenant:acme.tokens_per_day"] == 0  # nothing held
    finally:
        await store.aclose()
        await down.aclose()
        await delete_prefix(prefix)


async def test_memory_state_does_not_start_when_the_ledger_cannot_say_what_was_spent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "not-a-db").mkdir()  # a directory where the SQLite file should be: it cannot be opened
    storage = settings.storage.model_copy(update={"ledger": f"sqlite:///{tmp_path}/not-a-db",
                                                  "journal_dir": str(tmp_path / "journal")})
    gw = Gateway.build(settings.model_copy(update={"storage": storage}))
    try:
        with pytest.raises(LedgerUnavailable):
            await gw.start()
    finally:
        await gw.aclose()


async def test_day_only_figures_read_only_the_day(ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    await _fill(ledger, tmp_path)
    scopes = {Scope("tenant", "acme", "acme"), Scope("route", None, "chat")}
    full = await ledger_spend(ledger, scopes, settings.tenants.keys(), TODAY.date())
    day = await ledger_spend(ledger, scopes, settings.tenants.keys(), TODAY.date(), month=False)
    for s in scopes:
        assert day[s] == Spend(full[s].day_tokens, full[s].day_usd, 0, 0)
    assert full[Scope("tenant", "acme", "acme")] == Spend(205, 1_000_003 + BIG + 40, 217, 1_000_003 + 2 * BIG + 43)
