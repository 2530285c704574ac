"""The running gateway: every long-lived object, made once at start-up and passed down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from gateway.observability.logging import access_logger
from gateway.pipeline.router import Router
from gateway.providers.base import Provider
from gateway.providers.registry import build_providers
from gateway.settings import Settings
from gateway.store.keys import KeyCache, KeyRecord, KeyStore, static_key
from gateway.store.ledger import Ledger

_log = logging.getLogger("gateway")


def env_key_records(settings: Settings) -> dict[str, KeyRecord]:
    """Keys named in policies by environment variable; their id names the variable, never the value."""
    return dict(static_key(k.tenant, k.secret, k.source) for k in settings.env_keys)


@dataclass
class Gateway:
    settings: Settings
    providers: dict[str, Provider]
    router: Router
    ledger: Ledger
    keys: KeyStore
    key_cache: KeyCache
    access_log: logging.Logger = field(default_factory=access_logger)
    started_at: int = field(default_factory=lambda: int(time.time()))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        providers = build_providers(settings.providers)
        ledger = Ledger.from_url(settings.ledger_url())
        keys = KeyStore(ledger)
        return cls(settings=settings, providers=providers, router=Router(providers), ledger=ledger, keys=keys,
                   key_cache=KeyCache(keys, static=env_key_records(settings)))

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()
        try:
            await self.key_cache.refresh()
        except Exception as e:  # the ledger may be down: env keys still work, the loop retries
            _log.warning("key cache not loaded at start-up", extra={"fields": {"error": type(e).__name__}})
        self._tasks.append(asyncio.create_task(self.key_cache.run(self.settings.storage.auth_refresh_s)))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for provider in self.providers.values():
            await provider.aclose()
        await self.ledger.aclose()
