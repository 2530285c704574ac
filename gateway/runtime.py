"""The running gateway: every long-lived object, made once at start-up and passed down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from gateway.deadlines import Deadlines
from gateway.limits.seed import start_seeding
from gateway.limits.stage import Limits
from gateway.malloc import trim_periodically
from gateway.observability.logging import AccessLog, LogPipeline
from gateway.observability.metrics import Metrics
from gateway.observability.webhook import WebhookNotifier
from gateway.pipeline.model_call import ModelCalls
from gateway.pipeline.router import Router
from gateway.providers.base import Provider
from gateway.providers.registry import build_providers
from gateway.resilience.breaker import BreakerConfig, BreakerRegistry, Transition
from gateway.resilience.bulkhead import Bulkhead, InFlightCaps
from gateway.settings import Settings
from gateway.store.envelopes import EnvelopeWriter
from gateway.store.keys import KeyCache, KeyRecord, KeyStore, static_key
from gateway.store.ledger import Ledger, LedgerUnavailable
from gateway.store.state.base import StateStore, state_store_from_url

_log = logging.getLogger("gateway")
_breaker_log = logging.getLogger("gateway.breaker")


def env_key_records(settings: Settings) -> dict[str, KeyRecord]:
    """Keys named in policies by environment variable; their id names the variable, never the value."""
    return dict(static_key(k.tenant, k.secret, k.source) for k in settings.env_keys)


def _bulkheads(providers: dict[str, Provider]) -> dict[str, Bulkhead]:
    return {
        name: Bulkhead(name, p.settings.max_concurrency, max_waiters=p.settings.max_queue,
                       wait_timeout_s=p.settings.queue_timeout_ms / 1000)
        for name, p in providers.items()
    }


def tenants_per_target(settings: Settings) -> dict[str, int]:
    """How many tenants may reach each target (provider/model) through the routes they are allowed."""
    reach: dict[str, set[str]] = {}
    for route_name, route in settings.routes.items():
        allowed = [name for name, tenant in settings.tenants.items() if tenant.allows(route_name)]
        for target in route.targets:
            reach.setdefault(target.key, set()).update(allowed)
    return {key: len(names) for key, names in reach.items()}


@dataclass
class Gateway:
    settings: Settings
    providers: dict[str, Provider]
    ledger: Ledger
    keys: KeyStore
    key_cache: KeyCache
    metrics: Metrics
    notifier: WebhookNotifier
    breakers: BreakerRegistry
    bulkheads: dict[str, Bulkhead]
    router: Router
    ingress_caps: InFlightCaps
    admin_caps: InFlightCaps
    tenant_caps: InFlightCaps
    state: StateStore
    limits: Limits
    envelopes: EnvelopeWriter
    access_log: AccessLog = field(default_factory=AccessLog)
    log_pipeline: LogPipeline | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)
    model_calls: ModelCalls = field(init=False)  # the model-call pipeline, built from the rest
    started_at: int = field(default_factory=lambda: int(time.time()))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        providers = build_providers(settings.providers)
        ledger = Ledger.from_url(settings.ledger_url())
        keys = KeyStore(ledger)
        metrics = Metrics()
        notifier = WebhookNotifier(settings.resilience.webhook_url, metrics)

        def on_transition(t: Transition) -> None:
            fields = {"target": t.target, "from": t.from_state.value, "to": t.to_state.value, "reason": t.reason,
                      "failure_rate": round(t.failure_rate, 4), "window_total": t.window_total}
            whose = ""
            if t.tenant is not None:  # a tenant's own breaker: only that tenant is shed
                fields["tenant"] = t.tenant
                whose = f" for tenant {t.tenant}"
            _breaker_log.warning("breaker %s", t.to_state.value, extra={"fields": fields})
            metrics.breaker_changed(t.target, t.to_state.value, t.tenant)
            notifier.notify(f"gateway: circuit breaker for {t.target}{whose} is now "
                            f"{t.to_state.value.replace('_', '-')} ({t.reason})", breaker=fields)

        breakers = BreakerRegistry(BreakerConfig(**settings.resilience.breaker.model_dump()),
                                   on_transition=on_transition, tenants=tenants_per_target(settings))
        bulkheads = _bulkheads(providers)
        tenant_caps = InFlightCaps(None, per_key={name: t.max_in_flight for name, t in settings.tenants.items()
                                                  if t.max_in_flight is not None})
        state = state_store_from_url(settings.storage.state)
        envelopes = EnvelopeWriter(ledger, settings.resolve_path(settings.storage.journal_dir),
                                   commit_interval_s=settings.storage.journal_commit_ms / 1000)
        limits = Limits(settings, state, metrics)
        gateway = cls(settings=settings, providers=providers, ledger=ledger, keys=keys,
                      state=state, limits=limits, envelopes=envelopes,
                      key_cache=KeyCache(keys, static=env_key_records(settings)), metrics=metrics, notifier=notifier,
                      breakers=breakers, bulkheads=bulkheads, router=Router(providers, breakers, bulkheads),
                      ingress_caps=InFlightCaps(settings.server.max_in_flight),
                      admin_caps=InFlightCaps(settings.server.admin_max_in_flight), tenant_caps=tenant_caps)
        gateway.model_calls = ModelCalls(gateway)
        return gateway

    def log_dropped(self) -> int:
        return self.log_pipeline.dropped if self.log_pipeline else 0

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()
        await self.notifier.start()
        await self.envelopes.start()  # replays the journals left behind: their spend must be seeded too
        try:
            await start_seeding(self.state, self.settings, self.ledger, before_query=self.envelopes.flush,
                                replayed=lambda: not self.envelopes.stats["degraded"])
        except LedgerUnavailable as e:  # starting would re-grant every budget spent today
            _log.critical("budgets cannot be restored from the ledger: not starting",
                          extra={"fields": {"error": str(e)[:300]}})
            raise
        try:
            await self.key_cache.refresh()
        except Exception as e:  # the ledger may be down: env keys still work, the loop retries
            _log.warning("key cache not loaded at start-up", extra={"fields": {"error": type(e).__name__}})
        self._tasks.append(asyncio.create_task(self.key_cache.run(self.settings.storage.auth_refresh_s)))
        self._tasks.append(asyncio.create_task(trim_periodically()))
        self._tasks.append(asyncio.create_task(self.limits.refresh_live()))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for provider in self.providers.values():
            await provider.aclose()
        await self.notifier.aclose()
        await self.envelopes.aclose()  # shutdown flushes: to the ledger, or to the journal
        await self.state.aclose()
        self.limits.counter.close()
        await self.ledger.aclose()
        await self.deadlines.aclose()
