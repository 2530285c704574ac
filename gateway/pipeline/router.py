"""router: try a route's targets in order until one answers.

Failover is a plain loop: an error the provider may not repeat (timeout, unreachable, 429,
5xx, refused credentials) moves on to the next target; an error about the request itself
(400/404/422 from upstream) answers at once, since every target would say the same.
Every attempt is written on the Call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.errors import UpstreamError
from gateway.pipeline.context import Attempt, Call
from gateway.providers.base import ChatResult, ChatStream, EmbeddingsResult, Provider
from gateway.settings import RouteSettings, TargetSettings

T = TypeVar("T")


class Router:
    def __init__(self, providers: dict[str, Provider]) -> None:
        self.providers = providers

    async def _each_target(
        self, call: Call, route: RouteSettings,
        attempt: Callable[[Provider, TargetSettings], Awaitable[T]],
    ) -> T:
        last: UpstreamError | None = None
        for target in route.targets:
            provider = self.providers[target.provider]
            record = Attempt(provider=target.provider, model=target.model)
            call.attempts.append(record)
            started = time.perf_counter()
            try:
                result = await attempt(provider, target)
            except UpstreamError as e:
                record.status, record.error = e.status, type(e).__name__
                record.latency_ms = (time.perf_counter() - started) * 1000
                if not e.retryable:
                    raise
                last = e
                continue
            record.status = 200
            record.latency_ms = (time.perf_counter() - started) * 1000
            call.provider = target.provider
            return result
        assert last is not None  # a route has at least one target
        raise last

    def _timeout(self, provider: Provider) -> float:
        return provider.settings.timeout_s

    async def chat(self, call: Call, route: RouteSettings, body: dict[str, Any]) -> ChatResult:
        return await self._each_target(
            call, route, lambda p, t: p.chat(body, t.model, timeout_s=self._timeout(p)))

    async def chat_stream(self, call: Call, route: RouteSettings, body: dict[str, Any],
                          include_usage: bool) -> ChatStream:
        return await self._each_target(
            call, route,
            lambda p, t: p.chat_stream(body, t.model, timeout_s=self._timeout(p), include_usage=include_usage))

    async def embeddings(self, call: Call, route: RouteSettings, body: dict[str, Any]) -> EmbeddingsResult:
        return await self._each_target(
            call, route, lambda p, t: p.embeddings(body, t.model, timeout_s=self._timeout(p)))
